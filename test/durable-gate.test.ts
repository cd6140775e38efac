/**
 * The client gate (src/core/durable-gate.ts): bytes sent after a hold wait
 * for it and every earlier one, in order; a failed hold drops them.
 */
import { describe, expect, test } from "bun:test";
import { DurableGate } from "../src/core/durable-gate.ts";

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: Error) => void } {
  let resolve!: () => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

function gate() {
  const written: string[] = [];
  const events: string[] = [];
  const g = new DurableGate({
    write: (b) => written.push(b.toString()),
    failed: (e) => events.push(`failed: ${e.message}`),
    pause: () => events.push("pause"),
    resume: () => events.push("resume"),
  });
  return { g, written, events };
}

const tick = () => new Promise((r) => setTimeout(r, 0));

describe("DurableGate", () => {
  test("bytes pass straight through while nothing is held", () => {
    const { g, written } = gate();
    g.send(Buffer.from("a"));
    g.send(Buffer.from("b"));
    expect(written).toEqual(["a", "b"]);
    expect(g.holding).toBe(false);
  });

  test("bytes sent after a hold wait for it, and for every earlier hold, in order", async () => {
    const { g, written } = gate();
    const first = deferred();
    const second = deferred();
    g.send(Buffer.from("before"));
    g.hold(first.promise);
    g.send(Buffer.from("x"));
    g.hold(second.promise);
    g.send(Buffer.from("y"));
    // The later record is durable first: nothing may pass before the earlier one is.
    second.resolve();
    await tick();
    expect(written).toEqual(["before"]);
    first.resolve();
    await tick();
    expect(written).toEqual(["before", "xy"]);
    expect(g.holding).toBe(false);
    g.send(Buffer.from("after"));
    expect(written).toEqual(["before", "xy", "after"]);
  });

  test("what was sent before a later hold goes out once the earlier holds resolve", async () => {
    const { g, written } = gate();
    const first = deferred();
    const second = deferred();
    g.hold(first.promise);
    g.send(Buffer.from("x"));
    g.hold(second.promise);
    g.send(Buffer.from("y"));
    first.resolve();
    await tick();
    expect(written).toEqual(["x"]);
    second.resolve();
    await tick();
    expect(written).toEqual(["x", "y"]);
  });

  test("a failed hold drops what is queued, reports once, and nothing is written after", async () => {
    const { g, written, events } = gate();
    const first = deferred();
    const second = deferred();
    g.hold(first.promise);
    g.send(Buffer.from("x"));
    g.hold(second.promise);
    let drained = false;
    g.whenDrained(() => (drained = true));
    first.reject(new Error("fsync failed"));
    second.reject(new Error("fsync failed again"));
    await tick();
    g.send(Buffer.from("y"));
    expect(written).toEqual([]);
    expect(events).toEqual(["failed: fsync failed"]);
    expect(drained).toBe(true);
  });

  test("past its high-water mark the gate pauses its source, and resumes it once the bytes went out", async () => {
    const { g, written, events } = gate();
    const d = deferred();
    g.hold(d.promise);
    for (let i = 0; i < 9; i++) g.send(Buffer.alloc(64 << 10, 0x61));
    // Past 256 KiB, at every send (something else may have resumed the source meanwhile).
    expect(events).toEqual(["pause", "pause", "pause", "pause", "pause"]);
    let drained = false;
    g.whenDrained(() => (drained = true));
    d.resolve();
    await tick();
    expect(written).toHaveLength(1);
    expect(written[0]!.length).toBe(9 * (64 << 10));
    expect(events.slice(-2)).toEqual(["pause", "resume"]);
    expect(drained).toBe(true);
  });
});
