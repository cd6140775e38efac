/**
 * The S3 test server (test/helpers/s3.ts: versitygw, posix backend) driven by
 * Bun's built-in S3 client: what works, what an outage looks like to the
 * client, and how to do a create-only (If-None-Match: *) write, which
 * Bun.S3Client has no option for.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { S3Client } from "bun";
import { startS3, type S3Server } from "./helpers/s3.ts";

let s3: S3Server;
let client: S3Client;

beforeAll(async () => {
  s3 = await startS3({ bucket: "agate-s3-test" });
  client = s3.client();
}, 300_000); // the first run builds versitygw (scripts/s3.sh)

afterAll(async () => {
  await s3?.close();
});

/** The rejection of `p`, which must reject. */
async function rejection(p: Promise<unknown>): Promise<Error & { code?: string; path?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error("expected the promise to reject");
}

describe("S3 test server with Bun.S3Client", () => {
  test("the bucket is a directory under the posix root", () => {
    expect(existsSync(join(s3.dataDir, "agate-s3-test"))).toBe(true);
    expect(s3.endpoint).toBe(`http://127.0.0.1:${s3.port}`);
  });

  test("write, read back, stat, exists, list, delete", async () => {
    expect(await client.write("rec/2026/a.json", JSON.stringify({ n: 1 }), { type: "application/json" })).toBe(7);
    await client.file("rec/2026/b.bin").write(new Uint8Array([1, 2, 3]));
    await client.write("other/c.txt", "c");

    expect(await client.file("rec/2026/a.json").json()).toEqual({ n: 1 });
    expect(new Uint8Array(await client.file("rec/2026/b.bin").arrayBuffer())).toEqual(new Uint8Array([1, 2, 3]));
    // Path-style: the object is a file at <root>/<bucket>/<key>.
    expect(await Bun.file(join(s3.dataDir, "agate-s3-test/rec/2026/a.json")).text()).toBe('{"n":1}');

    const st = await client.stat("rec/2026/a.json");
    expect(st.size).toBe(7);
    expect(st.type).toBe("application/json;charset=utf-8"); // Bun adds the charset
    expect(st.etag).toMatch(/^"[0-9a-f]{32}"$/);

    expect(await client.exists("rec/2026/a.json")).toBe(true);
    expect(await client.exists("rec/2026/missing")).toBe(false);

    const listed = await client.list({ prefix: "rec/" });
    expect(listed.contents?.map((o) => o.key).sort()).toEqual(["rec/2026/a.json", "rec/2026/b.bin"]);
    expect(listed.contents?.find((o) => o.key === "rec/2026/b.bin")?.size).toBe(3);
    expect(listed.isTruncated).toBe(false);
    expect(listed.keyCount).toBe(2);

    const grouped = await client.list({ prefix: "", delimiter: "/" });
    expect(grouped.commonPrefixes?.map((p) => p.prefix).sort()).toEqual(["other/", "rec/"]);

    const page = await client.list({ prefix: "rec/", maxKeys: 1 });
    expect(page.contents).toHaveLength(1);
    expect(page.isTruncated).toBe(true);
    const rest = await client.list({ prefix: "rec/", maxKeys: 1, continuationToken: page.nextContinuationToken });
    expect(rest.contents?.map((o) => o.key)).toEqual(["rec/2026/b.bin"]);

    await client.delete("other/c.txt");
    expect(await client.exists("other/c.txt")).toBe(false);
  });

  test("server-side errors are S3Error with the S3 error code", async () => {
    const missingKey = await rejection(client.file("nope").text());
    expect(missingKey.name).toBe("S3Error");
    expect(missingKey.code).toBe("NoSuchKey");
    expect(missingKey.path).toBe("nope");

    const missingBucket = await rejection(s3.client("no-such-bucket").write("k", "v"));
    expect(missingBucket.name).toBe("S3Error");
    expect(missingBucket.code).toBe("NoSuchBucket");

    // Bun signs with region "auto" for a custom endpoint unless told; versitygw refuses it.
    const autoRegion = new S3Client({ ...s3.options, region: undefined });
    const badRegion = await rejection(autoRegion.write("k", "v"));
    expect(badRegion.code).toBe("AuthorizationHeaderMalformed");

    const badSecret = await rejection(new S3Client({ ...s3.options, secretAccessKey: "wrong" }).write("k", "v"));
    expect(badSecret.code).toBe("SignatureDoesNotMatch");
  });

  test("create-only write: presigned PUT with If-None-Match: *", async () => {
    // Bun.S3Client has no conditional-write option and sends no extra headers;
    // a presigned URL (signs only `host`) plus fetch does it.
    const put = (body: string) => fetch(client.presign("once/obj", { method: "PUT", expiresIn: 60 }), { method: "PUT", headers: { "If-None-Match": "*" }, body });
    const first = await put("first");
    expect(first.status).toBe(200);
    await first.arrayBuffer();
    const second = await put("second");
    expect(second.status).toBe(412);
    expect(await second.text()).toContain("<Code>PreconditionFailed</Code>");
    expect(await client.file("once/obj").text()).toBe("first");
    // A plain write overwrites.
    await client.write("once/obj", "third");
    expect(await client.file("once/obj").text()).toBe("third");
  });

  test("outage: stop() makes calls fail with ConnectionRefused, start() brings the same data back", async () => {
    await client.write("outage/before", "kept");
    await s3.stop();
    expect(s3.running).toBe(false);

    const t0 = performance.now();
    const err = await rejection(client.write("outage/during", "lost"));
    // Refused connections are not retried: the rejection is immediate.
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe("S3Error");
    expect(err.code).toBe("ConnectionRefused");
    expect(err.message).toBe("an unexpected error has occurred");
    expect((await rejection(client.file("outage/before").text())).code).toBe("ConnectionRefused");
    expect((await rejection(client.exists("outage/before"))).code).toBe("ConnectionRefused");
    expect((await rejection(client.list({ prefix: "outage/" }))).code).toBe("ConnectionRefused");

    await s3.start();
    expect(s3.running).toBe(true);
    expect(await client.file("outage/before").text()).toBe("kept");
    expect(await client.exists("outage/during")).toBe(false);
    await client.write("outage/after", "ok");
    expect((await client.list({ prefix: "outage/" })).contents?.map((o) => o.key).sort()).toEqual(["outage/after", "outage/before"]);
  });

  test("pause(): requests hang until resume()", async () => {
    s3.pause();
    let settled = false;
    const pending = client.write("paused/k", "v").finally(() => (settled = true));
    await Bun.sleep(500);
    expect(settled).toBe(false);
    s3.resume();
    expect(await pending).toBe(1);
    expect(await client.file("paused/k").text()).toBe("v");
  });

  test("a second server is independent", async () => {
    const other = await startS3();
    try {
      expect(other.port).not.toBe(s3.port);
      expect(other.bucket).toBe("agate-test");
      await other.client().write("k", "v");
      expect(await client.exists("k")).toBe(false);
      await other.createBucket("second");
      await other.client("second").write("k2", "v2");
      expect(await other.client("second").file("k2").text()).toBe("v2");
    } finally {
      await other.close();
    }
    expect(existsSync(other.dir)).toBe(false);
  });
});
