/**
 * The guard: the one place that sequences identity → policy → approval →
 * audit for every protocol. Adapters call openSession() once, check() before
 * forwarding each command, outcome() when the target answers, and
 * closeSession() at the end. Each check is a list of steps composed like
 * Hono's compose.ts: a step calls next() at most once, or refuses.
 *
 * Fail closed: a policy error is a deny (the engine returns one), an audit
 * write that cannot be made durable rejects, and nothing is forwarded that
 * is not in the log. A command is forwarded once its record is durable, or,
 * when the adapter shows it cannot take durable effect first, once it is
 * written, its answer held until it is durable (docs/ARCHITECTURE.md, "The
 * log's contract").
 */
import { randomUUID } from "node:crypto";
import { AgateError, asError } from "./errors.ts";
import type { Limits, Release } from "./limits.ts";
import type { LoginLockout } from "./lockout.ts";
import { ALL_DETECTORS } from "../mask/detectors.ts";
import { derive, type DerivedRule, type DerivedRuleStore } from "../mask/derived.ts";
import { type CompiledMask, compileMask, type MaskKeys, STRICTNESS } from "../mask/rules.ts";
import type { MaskCounts } from "../mask/types.ts";
import { maskRecord } from "./record-text.ts";
import type { Command, ConnectionRef, Decision, Identity, Outcome, Session } from "./types.ts";

/** What the guard needs from the policy engine (src/policy). */
export interface PolicyDecider {
  decide(input: object): Decision;
  readonly version: string;
  /**
   * Set by an engine that answers every input soundly itself (src/policy: true when it caches decisions on what
   * the policy reads, false when it evaluates each time): an earlier decision for the same text is then never
   * reused, since time or grants may have changed since. Absent: reused while the version is unchanged.
   */
  readonly caching?: boolean;
}

/** What the guard needs from the audit log (src/audit). */
export interface AuditSink {
  /** Resolves once the record is durable. */
  append(fields: Record<string, unknown>): Promise<number>;
  /** Ordered, made durable with the next group. */
  appendLater(fields: Record<string, unknown>): number;
}

/** A command held for approval, as the protocol tells its client about it. */
export interface HeldRequest {
  id: string;
  expires_at: string;
  approvers: string[];
  min_approvers: number;
  /** What the planner estimated the command's writes touch, for people (see ApprovalRequest.estimate). */
  estimate?: string;
}

/** The approval that released a command: what the policy sees as input.approval and the record keeps. */
export interface InputApproval {
  request: string;
  granted_by: { subject: string; issuer: string; at: string; reason: string }[];
  at: string;
}

/** Approvals step (src/approvals): holds a command until people decide. */
export interface ApprovalGate {
  hold(
    session: Session,
    command: Command,
    decision: Decision,
    onHold?: (req: HeldRequest, link?: string) => void,
  ): Promise<{ status: "approved"; request: { id: string; decided_reason?: string }; approval: InputApproval } | { status: "denied" | "expired" | "withdrawn"; request: { id: string; decided_reason?: string } }>;
  /** The client cancelled, or its connection closed: withdraw what this session holds. Returns whether something was held. */
  withdraw(sessionId: string, why?: "cancelled" | "disconnected"): boolean;
  /** Active grants (time-boxed approvals) for the policy input. */
  grants(identity: Identity, connection: string): { id: string; connection: string; granted_by: string[]; expires_at: string; request: string }[];
}

/** A presented credential: PostgreSQL password, SSH password, bearer token. */
export interface Credential {
  user: string;
  secret: string;
}

/** Identity step (src/identity): turns a credential into a verified identity or throws AgateError("AUTH_*"). */
export interface IdentityVerifier {
  verify(credential: Credential, connection: ConnectionRef): Promise<Identity>;
  /** Before each command: why the session's identity no longer holds (revoked key, expired token), or null. Synchronous and cheap. */
  revalidate?(identity: Identity): AgateError | null;
}

export interface ClientInfo {
  address: string;
  port?: number;
  tls: boolean;
  application?: string;
}

/**
 * A setting the client asked for when it connected (a PostgreSQL startup
 * parameter or a `-c` in its `options`): the session-stage policy input's
 * `session.settings`, with the name lower-cased as the policy compares it.
 */
export interface StartupSetting {
  name: string;
  value: string;
  from: "parameter" | "options";
}

/** The guard's answer to one command. */
export interface Verdict {
  allow: boolean;
  decision: Decision;
  /** Index of the command's audit record, -1 when not recorded (an allowed Parse). */
  record: number;
  /** Version of the policy that decided. */
  policy: string;
  /** The decision's mask, compiled: what the protocol applies to the response. */
  mask: CompiledMask;
  /**
   * Resolves once the command's record is durable; rejects with
   * AUDIT_WRITE_FAILED when it cannot be made so. Already settled unless
   * the adapter asked for `durable: "response"` and the command was
   * allowed: then `record` is -1 until it resolves, and the adapter must
   * hold everything the target answers from here on until it does.
   */
  durable: Promise<void>;
}

/**
 * When the adapter needs a command's record durable (docs/ARCHITECTURE.md,
 * "The log's contract"). "before forward": check() resolves only once it is
 * (today's rule, and every refusal's). "before response": check() resolves
 * once the record is written in order, and the adapter forwards at once but
 * holds the answer until `verdict.durable` resolves; only for a command
 * that provably cannot take durable effect before that (the adapter judges).
 */
export type DurableBefore = "forward" | "response";

interface CheckContext {
  session: Session;
  command: Command;
  /** A decision made earlier for the same text (extended protocol: at Parse); reused while the policy is unchanged. */
  decision?: Decision;
  policyVersion?: string;
  /** Record only if denied (a Parse is decided early; its execution is what gets recorded). */
  recordDenialsOnly?: boolean;
  /** Index of the audit record, or -1 when nothing was recorded. */
  record?: number;
  /** The identity step refused: the policy is not asked. */
  identityRefused?: boolean;
  /** Told when the command is held for approval (the protocol tells its client where to approve). */
  onHold?: (req: HeldRequest, link?: string) => void;
  /** The approval that released the command, for its record. */
  approval?: InputApproval;
  /** The decision's mask, compiled (maskStep): what the command's record and its response are masked with. */
  mask?: CompiledMask;
  /** The adapter holds the answer, not the forward, behind the record's durability (an allowed command only). */
  durableBefore?: DurableBefore;
  /** The record's durability, when check() does not wait for it. */
  durable?: Promise<void>;
  /** Mask rules the command derives (deriveStep), kept once its record is durable. */
  derived?: DerivedRule[];
}

/**
 * One step of the pipeline. A step that needs no I/O runs synchronously and
 * returns what next() returns; only a step that waits (the audit write, an
 * approval) returns a promise, so the common path costs no extra ticks.
 */
export type Step = (ctx: CheckContext, next: () => void | Promise<void>) => void | Promise<void>;

export interface GuardDeps {
  policy: PolicyDecider;
  audit: AuditSink;
  identity: IdentityVerifier;
  /** Told when a record that follows a forwarded command cannot be appended. */
  onAuditError?: (error: Error, fields: Record<string, unknown>) => void;
  /** Clock, for tests; the WASM runtime has none, so time comes in the input. */
  now?: () => Date;
  /** Holds commands whose decision requires approval; without it they are refused (fail closed). */
  approvals?: ApprovalGate;
  /** Keys for masking styles (the hmac style's key). */
  maskKeys?: MaskKeys;
  /** Counts failed logins; delays, blocks and locks (lockout.ts). */
  lockout?: LoginLockout;
  /** Derived mask rules (mask/derived.ts): added to every decision's mask; without it, a copy of covered values is refused. */
  derived?: DerivedRuleStore;
  /** Which worker thread of the gateway this guard serves in (src/workers), for session_start records; absent with one worker. */
  worker?: number;
}

/** Failures that say nothing about the credential (the identity provider is down): not counted against the client. */
const NOT_A_FAILED_LOGIN = new Set(["AUTH_ISSUER_UNREACHABLE"]);

export class Guard {
  private readonly pipeline: (ctx: CheckContext) => void | Promise<void>;
  private readonly now: () => Date;
  /** What each open session holds of its listener's limits. */
  private readonly held = new WeakMap<Session, Release>();

  constructor(private readonly deps: GuardDeps) {
    this.now = deps.now ?? (() => new Date());
    this.pipeline = compose([this.identityStep(), this.decideStep(), this.maskStep(), this.approvalStep(), this.deriveStep(), this.recordStep(), this.keepDerivedStep()]);
  }

  /** The version of the policy that decides now (caches of policy input facts are kept per version). */
  get policyVersion(): string {
    return this.deps.policy.version;
  }

  /**
   * Whether a client may try to log in as `user` at all (an address blocked,
   * a user locked after failed logins): asked before it presents a
   * credential. Returns the refusal (LOCKOUT_*), or null; the caller records it.
   * In a worker thread (src/workers) the answer comes later, from the main thread.
   */
  admission(client: ClientInfo, user: string | undefined): AgateError | null | Promise<AgateError | null> {
    return this.deps.lockout?.check(client.address, user) ?? null;
  }

  /**
   * Verify the credential, ask the policy (stage "session"), take a session
   * of `limits` for the identity, and record the session start durably.
   * Throws AgateError: LOCKOUT_*, AUTH_*, SESSION_DENIED,
   * LIMIT_SESSIONS_PER_IDENTITY, AUDIT_WRITE_FAILED. Every refusal is
   * recorded too. A failed login counts against the client's address and
   * user name; its answer may be delayed (lockout.ts).
   */
  async openSession(connection: ConnectionRef, client: ClientInfo, credential: Credential, limits?: Limits, settings: readonly StartupSetting[] = []): Promise<Session> {
    const refuse = (e: AgateError) => {
      this.sessionRefused(connection, client, e, { user: credential.user, ...(identity ? { identity } : {}) });
      return e;
    };
    let identity: Identity | undefined;
    const lockout = this.deps.lockout;
    let barred = this.admission(client, credential.user);
    if (barred instanceof Promise) barred = await barred;
    if (barred) throw refuse(barred);
    try {
      identity = await this.deps.identity.verify(credential, connection);
    } catch (e) {
      const err = e instanceof AgateError ? e : new AgateError("AUTH_FAILED", "the credential could not be verified");
      refuse(err);
      if (lockout && !NOT_A_FAILED_LOGIN.has(err.code)) {
        let failed = lockout.failed(client.address, credential.user);
        if (failed instanceof Promise) failed = await failed;
        const { delayMs, events } = failed;
        for (const ev of events) this.later({ type: "lockout", ...ev, connection, client }, EVERY);
        await lockout.delay(delayMs);
      }
      throw err;
    }
    lockout?.succeeded(credential.user);
    const session: Session = { id: randomUUID(), started_at: this.now().toISOString(), identity, connection, client };
    const decision = this.deps.policy.decide(this.input(session, "session", undefined, undefined, settings));
    if (!decision.allow) {
      throw refuse(new AgateError("SESSION_DENIED", `policy denied the session: ${decision.reasons.join("; ") || "no rule allowed it"}`, { reasons: decision.reasons }));
    }
    let release = limits?.admitSession(identity.subject);
    if (release instanceof Promise) release = await release;
    if (release instanceof AgateError) throw refuse(release);
    // As "name=value" text: the masker reads both (a client chooses the names under an allowed prefix such as "app.*").
    const asked = settings.length ? { settings: settings.map((s) => `${s.name}=${s.value}`) } : {};
    try {
      const worker = this.deps.worker !== undefined ? { worker: this.deps.worker } : {};
      await this.deps.audit.append(maskRecord({ type: "session_start", session: session.id, identity, connection, client, ...asked, policy: this.deps.policy.version, ...worker }, EVERY));
    } catch (e) {
      release?.();
      throw e;
    }
    if (release) this.held.set(session, release);
    return session;
  }

  /**
   * Record a session refused: by openSession, or by a protocol before any
   * credential was verified (a malformed or oversized startup or password
   * message, a client without TLS, a login timeout). `user` is the name the
   * client gave, if it got that far. The reason must carry no secret: never
   * the client's password message.
   */
  sessionRefused(connection: ConnectionRef, client: ClientInfo, error: AgateError, facts: { user?: string; identity?: Identity; sqlstate?: string } = {}): void {
    this.later({ type: "session_refused", connection, client, ...facts, code: error.code, reason: error.message }, EVERY);
  }

  /**
   * Decide one command and make its record durable (or, with `durable: "response"`, written in
   * order, its durability in `verdict.durable`). Never forwards anything itself.
   * `prior` carries an earlier decision for the same text (reused while the policy is unchanged);
   * `recordDenialsOnly` decides without recording an allowed command (it is recorded when it runs).
   */
  async check(session: Session, command: Command, opts: { prior?: Verdict; recordDenialsOnly?: boolean; onHold?: CheckContext["onHold"]; durable?: DurableBefore } = {}): Promise<Verdict> {
    const ctx: CheckContext = { session, command, decision: opts.prior?.decision, policyVersion: opts.prior?.policy, recordDenialsOnly: opts.recordDenialsOnly, onHold: opts.onHold, durableBefore: opts.durable };
    const pending = this.pipeline(ctx);
    if (pending) await pending;
    if (!ctx.decision || ctx.record === undefined) throw new AgateError("GUARD_INCOMPLETE", "the guard did not reach a decision");
    return { allow: ctx.decision.allow, decision: ctx.decision, record: ctx.record, policy: ctx.policyVersion ?? this.deps.policy.version, mask: ctx.mask!, durable: ctx.durable ?? DURABLE };
  }

  /**
   * What the policy would decide for `command` now, with nothing recorded or
   * held: a protocol asks before it sends anything of a command to the
   * target for facts (the planner's row estimates), so that a command the
   * policy refuses never reaches the target at all.
   */
  preview(session: Session, command: Command): Decision {
    const why = this.deps.identity.revalidate?.(session.identity);
    if (why) return denied(`agate.identity: ${why.message}`);
    if (command.invalid) return denied(`agate.${command.invalid.code.toLowerCase()}: ${command.invalid.message}`);
    return this.deps.policy.decide(this.input(session, "command", command));
  }

  /**
   * Record what the target answered for commands `seqs` (not awaited: ordered into the next group commit).
   * `mask`: the mask of the commands its error answers; an error agate could not match with a decided
   * command (an answer to a Parse or a Bind) is recorded with every detector.
   */
  outcome(session: Session, seqs: number[], outcome: Outcome, mask?: CompiledMask): void {
    this.later({ type: "outcome", session: session.id, identity: session.identity, seqs, ...outcome }, mask ?? EVERY);
  }

  /** A client asked to cancel what `session` is running (PostgreSQL CancelRequest, SSH channel close). */
  cancelRequested(session: Session, client: ClientInfo): void {
    const withdrew = this.deps.approvals?.withdraw(session.id) ?? false;
    this.later({ type: "cancel", session: session.id, identity: session.identity, client, ...(withdrew ? { withdrew_approval: true } : {}) }, EVERY);
  }

  /** `code`: the stable code of what ended it, when agate did (a limit: IDLE_SESSION_TIMEOUT, SESSION_LIFETIME, …). */
  closeSession(session: Session, reason: string, commands: number, code?: string): void {
    this.sessionSettings.delete(session.id);
    // A command still held can never run now: end its request, so no one approves it in vain.
    this.deps.approvals?.withdraw(session.id, "disconnected");
    this.held.get(session)?.();
    this.held.delete(session);
    this.later({ type: "session_end", session: session.id, identity: session.identity, reason, commands, ...(code ? { code } : {}) }, EVERY);
  }

  /**
   * Records that follow what was already forwarded (outcomes, ends). If the
   * log has failed, the commands that would need it are refused by check();
   * these facts are reported to the operator instead of thrown into a socket handler.
   * Their outside text is masked with `mask` (record-text.ts).
   */
  private later(fields: Record<string, unknown>, mask: CompiledMask): void {
    try {
      this.deps.audit.appendLater(maskRecord(fields, mask));
    } catch (e) {
      this.deps.onAuditError?.(asError(e), fields);
    }
  }

  /** The policy input document (DESIGN.md, "Policy contract"). */
  private input(session: Session, stage: "session" | "command", command?: Command, approval?: InputApproval, settings?: readonly StartupSetting[]): object {
    const grants = stage === "command" ? this.deps.approvals?.grants(session.identity, session.connection.name) : undefined;
    const derived = stage === "command" ? this.deps.derived?.forConnection(session.connection.name) : undefined;
    return {
      stage,
      now: this.now().toISOString(),
      identity: session.identity,
      connection: session.connection,
      session: { id: session.id, started_at: session.started_at, ...(settings ? { settings: settings.map((s) => ({ ...s, name: s.name.toLowerCase() })) } : {}) },
      client: session.client,
      ...(command ? { command: { text: command.text, sql: command.sql, exec: command.exec, http: command.http } } : {}),
      ...(derived?.length ? { mask: { derived } } : {}),
      ...(grants?.length ? { grants: grants.map((g) => ({ id: g.id, connection: g.connection, granted_by: g.granted_by, expires_at: g.expires_at, request: g.request })) } : {}),
      ...(approval ? { approval } : {}),
    };
  }

  /**
   * A decision that requires approval holds the command until people decide
   * (Approvals.hold). Approved: the policy decides again with
   * input.approval, and has the last word. Denied, timed out, withdrawn: a
   * deny saying which. Without approvals configured: refused (fail closed).
   * A Parse (recordDenialsOnly) is not held: its Execute is.
   */
  private approvalStep(): Step {
    const guard = this;
    return function approve(ctx: CheckContext, next: () => void | Promise<void>) {
      const d = ctx.decision!;
      if (!d.allow || !d.approval.required || ctx.recordDenialsOnly) return next();
      const approvals = guard.deps.approvals;
      if (!approvals) {
        ctx.decision = { ...d, allow: false, reasons: [...d.reasons, "agate.approval.unavailable: the policy requires an approval and this gateway has no approvals configured"] };
        return next();
      }
      // Approvers, their store and webhooks see the command as its record does.
      const shown = maskRecord({ type: "command", text: ctx.command.text, params: ctx.command.params, decision: { reasons: d.reasons } }, ctx.mask!);
      const command = { ...ctx.command, text: shown.text, ...(shown.params ? { params: shown.params } : {}) };
      return approvals.hold(ctx.session, command, { ...d, reasons: shown.decision.reasons }, ctx.onHold).then((out) => {
        if (out.status === "approved") {
          const again = guard.deps.policy.decide(guard.input(ctx.session, "command", ctx.command, out.approval));
          // The approval satisfies the requirement; the policy may still refuse for other reasons.
          ctx.decision = again.allow ? { ...again, approval: { ...again.approval, required: false } } : again;
          ctx.approval = out.approval;
          guard.compileMask(ctx);
        } else {
          ctx.decision = denied(`agate.approval.${out.status}: request ${out.request.id}: ${out.request.decided_reason ?? out.status}`);
        }
        return next();
      });
    };
  }

  /** The session's identity must still hold: a revoked key or an expired token stops the next command. */
  private identityStep(): Step {
    const verifier = this.deps.identity;
    const guard = this;
    return function identity(ctx: CheckContext, next: () => void | Promise<void>) {
      const why = verifier.revalidate?.(ctx.session.identity);
      if (why) {
        ctx.decision = denied(`agate.identity: ${why.message}`);
        ctx.policyVersion = guard.deps.policy.version;
        ctx.identityRefused = true;
      }
      return next();
    };
  }

  private decideStep(): Step {
    const guard = this;
    return function decide(ctx: CheckContext, next: () => void | Promise<void>) {
      const { command } = ctx;
      if (ctx.identityRefused) {
        // decided by the identity step
      } else if (command.invalid) ctx.decision = denied(`agate.${command.invalid.code.toLowerCase()}: ${command.invalid.message}`);
      else if (!ctx.decision || ctx.policyVersion !== guard.deps.policy.version || guard.deps.policy.caching !== undefined) {
        ctx.decision = guard.deps.policy.decide(guard.input(ctx.session, "command", command));
        ctx.policyVersion = guard.deps.policy.version;
      }
      return next();
    };
  }

  /**
   * Compile the decision's mask: the command's record (its text,
   * parameters and decision reasons) and its approvers see the command
   * masked with it, and so does the client its response. A mask the gateway
   * cannot apply (an unknown detector, hmac without a key) refuses the
   * command: it would otherwise answer unmasked. A command the policy never
   * saw (refused by identity or as invalid) is recorded with every detector
   * applied.
   */
  private maskStep(): Step {
    const guard = this;
    return function mask(ctx: CheckContext, next: () => void | Promise<void>) {
      guard.compileMask(ctx);
      return next();
    };
  }

  private compileMask(ctx: CheckContext): void {
    const d = ctx.decision!;
    const unseen = ctx.identityRefused || ctx.command.invalid !== undefined;
    const derived = this.deps.derived?.forConnection(ctx.session.connection.name) ?? NO_COLUMNS;
    const settings = this.sessionSettings.get(ctx.session.id);
    const mask = derived.length > 0 || settings ? { columns: derived.length > 0 ? [...new Set([...d.mask.columns, ...derived])] : d.mask.columns, detectors: d.mask.detectors, ...(settings ? { settings } : {}) } : d.mask;
    try {
      ctx.mask = unseen ? compileMask(EVERY_DETECTOR, this.deps.maskKeys) : this.compiledMask(mask);
    } catch (e) {
      ctx.mask = compileMask(EVERY_DETECTOR);
      if (d.allow) ctx.decision = denied(`agate.mask.invalid: ${asError(e).message}`);
    }
  }

  /** A cached decision's mask is frozen (src/policy/cache.ts) and compiled once; any other is compiled (compileMask caches by its text). */
  private compiledMask(mask: Decision["mask"]): CompiledMask {
    if (!Object.isFrozen(mask)) return compileMask(mask, this.deps.maskKeys);
    let out = this.masks.get(mask);
    if (out === undefined) this.masks.set(mask, (out = compileMask(mask, this.deps.maskKeys)));
    return out;
  }
  private readonly masks = new WeakMap<Decision["mask"], CompiledMask>();
  /**
   * An allowed statement that moves covered values elsewhere derives mask
   * rules for where they go (mask/derived.ts); one whose destination agate
   * cannot follow is refused (also at Parse, so the client learns early),
   * and so is every such copy on a gateway without a derived rule store.
   */
  private deriveStep(): Step {
    const guard = this;
    return function deriveRules(ctx: CheckContext, next: () => void | Promise<void>) {
      const d = ctx.decision!;
      const facts = ctx.command.sql;
      if (!d.allow || facts === undefined || ctx.mask!.columns.length === 0) return next();
      const out = derive(facts.statements, ctx.mask!);
      const refuse = out.refuse ?? (out.rules.some((r) => r.kind === "column") && !guard.deps.derived ? "this gateway keeps no derived mask rules, so the destination would not be masked" : undefined);
      if (refuse) ctx.decision = { ...denied(`agate.mask.untracked_copy: ${refuse}`), mask: d.mask };
      else if (!ctx.recordDenialsOnly && out.rules.length > 0) ctx.derived = out.rules;
      return next();
    };
  }

  /**
   * Keep the rules the command derives, each new one recorded durably,
   * before the command is forwarded: column rules in the store (every later
   * session of the connection), setting rules for this session (set_config
   * without is_local sets the session's own value; no other session sees it).
   */
  private keepDerivedStep(): Step {
    const guard = this;
    return function keepDerived(ctx: CheckContext, next: () => void | Promise<void>) {
      const rules = ctx.derived;
      if (!rules) return next();
      const { session, command } = ctx;
      const added: DerivedRule[] = [];
      const columns = rules.filter((r) => r.kind === "column");
      if (columns.length > 0) {
        try {
          added.push(...guard.deps.derived!.add(session.connection.name, columns));
        } catch (e) {
          throw new AgateError("MASK_DERIVED_UNAVAILABLE", `the derived mask rules could not be kept, so the statement was not run: ${asError(e).message}`);
        }
      }
      for (const r of rules) {
        if (r.kind !== "setting") continue;
        let mine = guard.sessionSettings.get(session.id);
        if (mine === undefined) guard.sessionSettings.set(session.id, (mine = {}));
        if (mine[r.rule] !== undefined && STRICTNESS[mine[r.rule]!] <= STRICTNESS[r.style]) continue;
        mine[r.rule] = r.style;
        added.push(r);
      }
      if (added.length === 0) return next();
      const written: Promise<unknown>[] = added.map((r) =>
        guard.deps.audit.append(
          maskRecord({ type: "mask_derived", session: session.id, identity: session.identity, seq: command.seq, connection: session.connection.name, kind: r.kind, rule: r.rule, style: r.style, from: r.sources, scope: r.kind === "setting" ? "session" : "connection" }, EVERY),
        ),
      );
      // With several worker threads, every other one must hold a new column rule before the statement runs.
      const shared = added.some((r) => r.kind === "column") ? guard.deps.derived!.share?.() : undefined;
      const everywhere = shared?.catch((e: unknown) => {
        throw new AgateError("MASK_DERIVED_UNAVAILABLE", `the derived mask rules could not reach every worker, so the statement was not run: ${asError(e).message}`);
      });
      return Promise.all(written).then(
        () => (everywhere ? everywhere.then(() => next()) : next()),
        (e: unknown) => {
          everywhere?.catch(() => {});
          throw new AgateError("AUDIT_WRITE_FAILED", `the audit log could not record a derived mask rule: ${asError(e).message}`);
        },
      );
    };
  }

  /** Derived rules on settings, per session (keepDerivedStep). */
  private readonly sessionSettings = new Map<string, Record<string, DerivedRule["style"]>>();

  private recordStep(): Step {
    const guard = this;
    return function record(ctx: CheckContext, next: () => void | Promise<void>) {
      const d = ctx.decision!;
      const { command } = ctx;
      if (ctx.recordDenialsOnly && d.allow) {
        ctx.record = -1;
        return next();
      }
      const counts: MaskCounts = {};
      const fields: Record<string, unknown> = maskRecord(
        {
          type: "command",
          session: ctx.session.id,
          identity: ctx.session.identity,
          seq: command.seq,
          text: command.text,
          ...(command.sql ? { sql: command.sql.statements.map((s) => ({ kind: s.kind, tag: s.tag })) } : {}),
          ...(command.exec ? { exec: command.exec } : {}),
          ...(command.params ? { params: command.params } : {}),
          decision: { allow: d.allow, reasons: d.reasons, policy: guard.deps.policy.version },
          ...(ctx.approval ? { approval: ctx.approval } : {}),
        },
        ctx.mask!,
        counts,
      );
      if (Object.keys(counts).length) fields.masked = counts;
      const failed = (e: unknown): never => {
        const err = asError(e);
        throw err instanceof AgateError ? err : new AgateError("AUDIT_WRITE_FAILED", `the audit log could not record the command: ${err.message}`);
      };
      let written: Promise<number>;
      try {
        written = guard.deps.audit.append(fields);
      } catch (e) {
        return failed(e);
      }
      if (ctx.durableBefore === "response" && d.allow) {
        // The adapter forwards now and holds the answer: the record's durability travels with the verdict.
        ctx.record = -1;
        ctx.durable = written.then(() => undefined, failed);
        // The adapter listens (and closes the session on failure); no rejection goes unhandled meanwhile.
        ctx.durable.catch(() => {});
        return next();
      }
      return written.then((index) => {
        ctx.record = index;
        return next();
      }, failed);
    };
  }
}

/** The mask for records of commands no policy decided on, and for what a session's records quote of its client and target. */
const EVERY_DETECTOR = { columns: [], detectors: ALL_DETECTORS };
const EVERY = compileMask(EVERY_DETECTOR);
/** The durability of a record check() waited for. */
const DURABLE = Promise.resolve();
const NO_COLUMNS: readonly string[] = [];

function denied(reason: string): Decision {
  return { allow: false, reasons: [reason], approval: { required: false, approvers: [], timeout_s: 0 }, mask: { columns: [], detectors: [] } };
}

/** Run steps in order; each may call next() once. Returns a promise only if some step waited. */
export function compose(steps: Step[]): (ctx: CheckContext) => void | Promise<void> {
  return (ctx) => {
    let index = -1;
    const dispatch = (i: number): void | Promise<void> => {
      if (i <= index) throw new AgateError("GUARD_NEXT_TWICE", "a guard step called next() more than once");
      index = i;
      const step = steps[i];
      return step ? step(ctx, () => dispatch(i + 1)) : undefined;
    };
    return dispatch(0);
  };
}
