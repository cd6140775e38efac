/**
 * The SSH listener (ssh2 Server): clients log in with an API key or an OIDC
 * access token as their password (or keyboard-interactive answer), checked
 * by the guard as for PostgreSQL; agate then opens its own connection to
 * the target (upstream.ts) and maps channels one to one.
 *
 * This step serves `exec` only: each command line is parsed (exec-facts.ts),
 * decided by the guard and recorded durably before it reaches the target;
 * refused, the client reads one line on stderr naming the rule and gets
 * exit status 126, and the connection stays usable. Allowed, its stdout
 * and stderr come back through the StreamMasker with the decision's mask,
 * and the exit status or signal is relayed as the target sent it.
 * Shells, ptys, subsystems (sftp), forwarding, agent, X11 and env requests
 * are refused with a message where SSH can carry one, and recorded.
 */
import { Server, type AuthContext, type Connection, type ServerChannel, type ClientChannel, type Client } from "ssh2";
import type { SshTarget } from "../../config/ssh.ts";
import { AgateError, asError } from "../../core/errors.ts";
import type { ClientInfo, Guard, HeldRequest } from "../../core/guard.ts";
import { ListenerLimits, DEFAULT_LIMITS, type Limits, type Release, type SessionClock } from "../../core/limits.ts";
import type { Logger } from "../../core/log.ts";
import type { Command, ConnectionRef, Session } from "../../core/types.ts";
import { DETECTORS, findAll } from "../../mask/detectors.ts";
import type { CompiledMask } from "../../mask/rules.ts";
import { StreamMasker } from "../../mask/stream.ts";
import { maskValue } from "../../mask/styles.ts";
import type { MaskCounts } from "../../mask/types.ts";
import { SERVER_ALGORITHMS } from "./algorithms.ts";
import { execFacts } from "./exec-facts.ts";
import type { HostKey } from "./hostkeys.ts";
import { connectTarget } from "./upstream.ts";

export interface SshListenerOptions {
  connection: ConnectionRef;
  host: string;
  port: number;
  hostKeys: HostKey[];
  hostKeysDir: string;
  target: SshTarget;
  guard: Guard;
  log: Logger;
  limits?: Limits;
  /** From accept to a verified identity. */
  loginTimeoutMs?: number;
}

export interface SshListener {
  port: number;
  close(o?: { sessions?: boolean }): Promise<void>;
}

/** What a refused exec exits with (as a shell does for a command it cannot run). */
export const REFUSED_EXIT = 126;
const METHODS: AuthContext["method"][] = ["password", "keyboard-interactive"];

export function listenSsh(opts: SshListenerOptions): Promise<SshListener> {
  const limits: Limits = opts.limits ?? new ListenerLimits(opts.connection.name, DEFAULT_LIMITS);
  const open = new Set<SshConnection>();
  const server = new Server({ hostKeys: opts.hostKeys.map((k) => k.private), algorithms: SERVER_ALGORITHMS, ident: "agate" }, (client, info) => {
    const c = new SshConnection(client, { address: info.ip, port: info.port, tls: false, application: info.header.identRaw }, opts, limits);
    open.add(c);
    client.once("close", () => open.delete(c));
  });
  return new Promise((resolve, reject) => {
    server.once("error", (e: Error) => reject(new AgateError("LISTEN_FAILED", `cannot listen on ${opts.host}:${opts.port} for connection "${opts.connection.name}": ${e.message}`)));
    server.listen(opts.port, opts.host, () => {
      const port = (server.address() as { port: number }).port;
      resolve({
        port,
        close: async (o = {}) => {
          const closed = new Promise<void>((done) => server.close(() => done()));
          if (o.sessions) await Promise.all([...open].map((c) => c.end("the gateway is shutting down")));
          await closed;
        },
      });
    });
  });
}

/** One client connection: login, then its channels. */
class SshConnection {
  private session: Session | undefined;
  private upstream: Promise<Client> | undefined;
  private seq = 0;
  private ended = false;
  private releaseConnection: Release | undefined;
  private readonly loginTimer: ReturnType<typeof setTimeout> | undefined;
  /** Settles once the connection is admitted (core/limits.ts; asked of the main thread from a worker). */
  private readonly admitted: Promise<boolean>;
  /** One login attempt at a time (a client may pipeline them). */
  private authenticating: Promise<void> = Promise.resolve();
  private closeReason = "client disconnected";
  private closeCode: string | undefined;
  /** Idle timeout and lifetime (core/limits.ts): idle while no channel runs a command. */
  private clock: SessionClock | undefined;
  private running = 0;

  constructor(
    private readonly client: Connection,
    private readonly info: ClientInfo,
    private readonly opts: SshListenerOptions,
    private readonly limits: Limits,
  ) {
    client.on("error", (e: Error) => opts.log("debug", "ssh client error", { connection: opts.connection.name, client: info.address, error: e.message }));
    const admit = (a: Release | AgateError): boolean => {
      if (a instanceof AgateError) {
        this.refuse(a);
        void this.end(a.message, a.code);
        return false;
      }
      if (this.ended) a();
      else this.releaseConnection = a;
      return true;
    };
    const admitted = limits.admitConnection(info.address);
    this.admitted = admitted instanceof Promise ? admitted.then(admit, () => admit(new AgateError("LIMIT_UNAVAILABLE", "the connection limits could not be asked"))) : Promise.resolve(admit(admitted));
    this.loginTimer = setTimeout(() => {
      if (this.session) return;
      this.refuse(new AgateError("LOGIN_TIMEOUT", `no verified login within ${opts.loginTimeoutMs ?? 60_000} ms`));
      client.end();
    }, opts.loginTimeoutMs ?? 60_000);
    client.on("authentication", (ctx) => {
      this.authenticating = this.authenticating.then(() => this.authenticate(ctx)).catch((e) => opts.log("error", "ssh authentication failed", { error: asError(e).message }));
    });
    client.on("session", (accept) => this.channel(accept()));
    client.on("tcpip", (_accept, reject, i) => {
      reject();
      this.unsupported(`direct-tcpip ${i.destIP}:${i.destPort}`, "port forwarding (-L, -D) is not available through agate");
    });
    client.on("openssh.streamlocal", (_accept, reject, i) => {
      reject();
      this.unsupported(`direct-streamlocal ${i.socketPath}`, "socket forwarding is not available through agate");
    });
    client.on("request", (_accept, reject, name, i) => {
      reject?.();
      const r = i as { bindAddr?: string; bindPort?: number; socketPath?: string };
      const where = r.bindAddr !== undefined ? `${r.bindAddr}:${r.bindPort}` : (r.socketPath ?? "");
      this.unsupported(`${name} ${where}`.trim(), "remote forwarding (-R) is not available through agate");
    });
    client.once("close", () => {
      clearTimeout(this.loginTimer);
      this.releaseConnection?.();
      void this.end(this.closeReason, this.closeCode);
    });
  }

  /** End the connection and its session (recorded once). */
  async end(reason: string, code?: string): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    this.client.end();
    const session = this.session;
    this.clock?.stop();
    if (session) {
      this.opts.guard.closeSession(session, reason, this.seq, code);
      this.opts.log("info", "session ended", { connection: this.opts.connection.name, session: session.id, reason, commands: this.seq });
    }
    const up = this.upstream;
    if (up) await up.then((u) => u.end(), () => {});
  }

  private refuse(e: AgateError, user?: string): void {
    this.opts.guard.sessionRefused(this.opts.connection, this.info, e, user !== undefined ? { user } : {});
    this.opts.log("info", "session refused", { connection: this.opts.connection.name, client: this.info.address, code: e.code });
  }

  private async authenticate(ctx: AuthContext): Promise<void> {
    if (!(await this.admitted) || this.session || this.ended) return ctx.reject([], false);
    const user = ctx.username;
    // A blocked address, a locked user: refused before a credential is asked for.
    const barred = await this.opts.guard.admission(this.info, user);
    if (barred) {
      this.refuse(barred, user);
      return ctx.reject([], false);
    }
    let secret: string;
    if (ctx.method === "password") secret = ctx.password;
    else if (ctx.method === "keyboard-interactive") {
      secret = await new Promise<string>((answer) => ctx.prompt([{ prompt: "agate API key or access token: ", echo: false }], "agate", "", (answers) => answer(answers[0] ?? "")));
    } else return ctx.reject(METHODS); // none, publickey, hostbased: not (yet) a way in
    let session: Session;
    try {
      session = await this.opts.guard.openSession(this.opts.connection, this.info, { user, secret }, this.limits);
    } catch (e) {
      const err = e instanceof AgateError ? e : new AgateError("AUTH_FAILED", "authentication failed");
      this.opts.log("info", "session refused", { connection: this.opts.connection.name, client: this.info.address, user, code: err.code });
      return ctx.reject(METHODS);
    }
    if (this.ended) {
      this.opts.guard.closeSession(session, "client left during login", 0);
      return ctx.reject();
    }
    this.session = session;
    clearTimeout(this.loginTimer);
    // The target is reached while the client opens its channel; a channel waits for it.
    this.upstream = connectTarget(this.opts.target, this.opts.hostKeysDir);
    this.upstream.catch((e: unknown) => {
      const err = e instanceof AgateError ? e : new AgateError("UPSTREAM_FAILED", asError(e).message);
      this.opts.log("error", "target connection failed", { connection: this.opts.connection.name, session: session.id, code: err.code, error: err.message });
      this.closeReason = `target connection failed: ${err.message}`;
      this.closeCode = err.code;
    });
    // The target going away ends the session: no later channel could run.
    this.upstream.then(
      (u) => u.once("close", () => void this.end("the target closed the connection", "UPSTREAM_CLOSED")),
      () => {},
    );
    this.clock = this.limits.clock((why) => void this.end(why.message, why.code));
    this.clock.idle(false);
    ctx.accept();
    this.opts.log("info", "session started", { connection: this.opts.connection.name, session: session.id, subject: session.identity.subject, client: this.info.address });
  }

  private channel(ch: import("ssh2").Session): void {
    // The target's channel of the command this channel runs: signals the client sends go there.
    const running: { target?: ClientChannel } = {};
    ch.on("signal", (accept, reject, info) => {
      if (!running.target) return reject?.();
      running.target.signal(info.name);
      accept?.();
    });
    ch.on("exec", (accept, _reject, info) => {
      const stream = accept();
      // A session is idle while none of its channels runs a command.
      this.running++;
      this.clock?.active();
      stream.once("close", () => {
        if (--this.running === 0) this.clock?.idle(false);
      });
      void this.exec(stream, info.command, running);
    });
    ch.on("shell", (accept) => this.refuseChannel(accept(), "shell", "interactive shells are not available through agate yet; run commands with `ssh HOST COMMAND`"));
    ch.on("subsystem", (accept, _reject, info) => this.refuseChannel(accept(), `subsystem ${info.name}`, `the ${info.name} subsystem is not available through agate yet`));
    ch.on("pty", (_accept, reject) => {
      reject?.();
      this.unsupported("pty-req", "terminals (pty) are not available through agate yet");
    });
    ch.on("env", (_accept, reject, info) => {
      reject?.();
      this.unsupported(`env ${info.key}`, "environment requests are not passed to the target");
    });
    ch.on("x11", (_accept, reject) => {
      reject?.();
      this.unsupported("x11-req", "X11 forwarding is not available through agate");
    });
    ch.on("auth-agent", (_accept, reject) => {
      reject?.();
      this.unsupported("auth-agent-req@openssh.com", "agent forwarding is not available through agate");
    });
  }

  private nextCommand(text: string): Command {
    return { seq: ++this.seq, text };
  }

  /** A request agate does not serve yet: recorded as a refused command. */
  private unsupported(text: string, message: string): void {
    const session = this.session;
    if (!session) return;
    const command: Command = { ...this.nextCommand(text), invalid: { code: "SSH_UNSUPPORTED", message } };
    this.opts.guard.check(session, command).catch((e: unknown) => this.opts.log("error", "ssh refusal not recorded", { session: session.id, error: asError(e).message }));
  }

  /** A channel request refused with a message the client can read (stderr, exit 126). */
  private refuseChannel(stream: ServerChannel, text: string, message: string): void {
    this.unsupported(text, message);
    finish(stream, `agate: ${message}\n`, REFUSED_EXIT);
  }

  private async exec(stream: ServerChannel, text: string, running: { target?: ClientChannel }): Promise<void> {
    const session = this.session!;
    const { guard, log } = this.opts;
    let command = this.nextCommand(text);
    try {
      command.exec = execFacts(text) as unknown as Record<string, unknown>;
    } catch (e) {
      const err = e instanceof AgateError ? e : new AgateError("EXEC_PARSE", asError(e).message);
      command = { ...command, invalid: { code: err.code, message: err.message } };
    }
    let closed = false;
    let deciding = true;
    // What the client sends while the command is decided (or held) waits here, so that its
    // channel close is seen (ssh2 emits "close" only once the input has been read to its end).
    const input = new EarlyInput(stream);
    stream.once("close", () => {
      closed = true;
      // Closing the channel while the command is held withdraws it.
      if (deciding) guard.cancelRequested(session, this.info);
    });
    const onHold = (req: HeldRequest, link?: string) => {
      const who = `${req.approvers.join(", ") || "the approvers"}${req.min_approvers > 1 ? `, ${req.min_approvers} of them` : ""}`;
      // Why it is held, for the person waiting: the policy's reasons (the client's own command, so not masked).
      const why = guard.preview(session, command).reasons.join("; ");
      stream.stderr.write(`agate: this command waits for approval by ${who}: request ${req.id}, until ${req.expires_at}${why ? ` (${why})` : ""}${link ? `; approve or deny at ${link}` : ""}; close the session to withdraw it\n`);
    };
    let verdict;
    try {
      verdict = await guard.check(session, command, { onHold, durable: "forward" });
    } catch (e) {
      const err = asError(e);
      log("error", "ssh command not decided", { session: session.id, error: err.message });
      return finish(stream, `agate: the command was not run: ${err.message}\n`, REFUSED_EXIT);
    } finally {
      deciding = false;
    }
    if (closed) return;
    if (!verdict.allow) {
      const reasons = verdict.decision.reasons.length ? verdict.decision.reasons.join("; ") : "no policy rule allowed it";
      return finish(stream, `agate: command refused: ${reasons} (session ${session.id}, audit record ${verdict.record})\n`, REFUSED_EXIT);
    }
    let upstream: Client;
    try {
      upstream = await this.upstream!;
    } catch (e) {
      const err = e instanceof AgateError ? e : new AgateError("UPSTREAM_FAILED", asError(e).message);
      guard.outcome(session, [command.seq], { tags: [], rows: 0, error: { code: err.code, message: err.message } });
      // A target that cannot be reached (or is not the host it should be) serves no channel of this session:
      // once the client has read why, the connection ends.
      stream.once("close", () => void this.end(this.closeReason, this.closeCode));
      finish(stream, `agate: the command was not run: ${err.message}\n`, 255);
      return;
    }
    this.forward(stream, upstream, command, verdict.mask, input, running);
  }

  /** Run an allowed command on the target; stream its output back masked; relay how it ended and record it. */
  private forward(stream: ServerChannel, upstream: Client, command: Command, mask: CompiledMask, input: EarlyInput, running: { target?: ClientChannel }): void {
    const session = this.session!;
    const started = performance.now();
    upstream.exec(command.text, (err, ch: ClientChannel) => {
      if (err) {
        this.opts.guard.outcome(session, [command.seq], { tags: [], rows: 0, error: { code: "UPSTREAM_EXEC", message: err.message } });
        return finish(stream, `agate: the target refused the command: ${err.message}\n`, 255);
      }
      running.target = ch;
      ch.once("close", () => (running.target = undefined));
      let bytesIn = 0;
      const out = { bytes: 0 };
      const stdout = masked(mask, (b) => write(stream, b, ch, out));
      const stderr = masked(mask, (b) => write(stream.stderr, b, ch, out));
      input.handOver((b) => {
        bytesIn += b.length;
        if (!ch.write(b)) stream.pause();
      }, () => ch.end());
      ch.on("drain", () => stream.resume());
      stream.once("close", () => ch.close());
      ch.on("data", (b: Buffer) => stdout.write(b));
      ch.stderr.on("data", (b: Buffer) => stderr.write(b));
      let exit: { status?: number; signal?: string; core_dumped?: boolean; message?: string } = {};
      ch.on("exit", (code: number | null, signal?: string, dump?: boolean, desc?: string) => {
        exit = code !== null && code !== undefined ? { status: code } : { signal: String(signal).replace(/^SIG/, ""), ...(dump ? { core_dumped: true } : {}), ...(desc ? { message: desc } : {}) };
      });
      ch.once("close", () => {
        stdout.end();
        stderr.end();
        if (exit.status !== undefined) stream.exit(exit.status);
        else if (exit.signal !== undefined) stream.exit(exit.signal, exit.core_dumped ?? false, exit.message ?? "");
        stream.end();
        const counts = { ...stdout.counts };
        for (const [k, v] of Object.entries(stderr.counts)) counts[k] = (counts[k] ?? 0) + v;
        this.opts.guard.outcome(
          session,
          [command.seq],
          {
            tags: [],
            rows: 0,
            bytes: out.bytes,
            exit,
            bytes_in: bytesIn,
            duration_ms: Math.round(performance.now() - started),
            ...(Object.keys(counts).length ? { masked: { rows: 0, columns: {}, detectors: counts } } : {}),
          },
          mask,
        );
      });
    });
  }
}

/** A channel's input from its start until the command runs: kept (up to EARLY_INPUT_MAX, then the client waits), then handed over. */
class EarlyInput {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private ended = false;
  private onData: (b: Buffer) => void = (b) => {
    this.chunks.push(b);
    this.bytes += b.length;
    if (this.bytes > EARLY_INPUT_MAX) this.stream.pause();
  };
  private onEnd: () => void = () => {
    this.ended = true;
  };

  constructor(private readonly stream: ServerChannel) {
    stream.on("data", (b: Buffer) => this.onData(b));
    stream.once("end", () => this.onEnd());
  }

  /** From now on, input goes to `data` and its end to `end`; what was kept goes first. */
  handOver(data: (b: Buffer) => void, end: () => void): void {
    for (const b of this.chunks) data(b);
    this.chunks = [];
    this.onData = data;
    if (this.ended) end();
    else this.onEnd = end;
    this.stream.resume();
  }
}

/** Input kept while a command is decided or held; past it the client's window stays closed until the command runs. */
const EARLY_INPUT_MAX = 1 << 20;

/** Write what the target sent; pause the target while the client's window is full. */
function write(to: { write(b: Uint8Array): boolean; once(e: "drain", f: () => void): unknown }, b: Uint8Array, from: ClientChannel, out: { bytes: number }): void {
  out.bytes += b.length;
  if (!to.write(b)) {
    from.pause();
    to.once("drain", () => from.resume());
  }
}

/** The decision's mask over one output stream (no mask: a pass-through). */
function masked(mask: CompiledMask, onData: (b: Uint8Array) => void): { write(b: Uint8Array): void; end(): void; counts: MaskCounts } {
  if (mask.detectors.length === 0) return { write: onData, end() {}, counts: {} };
  const m = new StreamMasker({
    detectors: mask.detectors.map((d) => DETECTORS[d]!),
    style: { kind: "redact" },
    find: (text) => findAll(text, mask.detectors),
    mask: (value, d) => maskValue(value, d.name, mask.styles[d.name]!),
    onData,
  });
  return { write: (b) => m.write(b), end: () => m.end(), counts: m.counts };
}

/** Answer a channel agate ran nothing on: a message on stderr, an exit status, the channel closed. */
function finish(stream: ServerChannel, stderr: string, status: number): void {
  stream.stderr.write(stderr);
  stream.exit(status);
  stream.end();
}
