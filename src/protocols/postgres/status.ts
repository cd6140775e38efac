/**
 * Session state the target reports back, masked like a result: the
 * ParameterStatus of a setting a client can set to any text, and the
 * payload of a notification. `set_config('application_name', email, false)`
 * would otherwise hand a covered column's value to the client in the
 * ParameterStatus that reports the change.
 *
 * Each is masked with the mask of the command that caused it (session.ts
 * causedBy): by its detectors, and, when that command is tainted by a
 * column rule (rows.ts taintRule: a covered base column among its sources,
 * as for its computed result columns), replaced whole in that rule's style. Settings a client cannot set to arbitrary text (client_encoding,
 * standard_conforming_strings, server_version, DateStyle …) pass as sent.
 */
import type { SqlFacts } from "../../core/types.ts";
import { type CompiledMask, maskWith } from "../../mask/rules.ts";
import { maskValue } from "../../mask/styles.ts";
import type { MaskCounts } from "../../mask/types.ts";
import { taintRule, maskNotification } from "./rows.ts";
import { message } from "./wire.ts";

/** application_name, and custom (placeholder) settings, whose names have a dot: text a client chooses. */
function isFreeText(name: string): boolean {
  return name === "application_name" || name.includes(".");
}

/** `text` as the command's mask shows it; `label` names it in a whole replacement. */
function maskStateText(text: string, label: string, m: CompiledMask, facts: SqlFacts | undefined, counts: MaskCounts): string {
  if (m.empty || text === "") return text;
  const rule = taintRule(m, facts);
  if (rule) return maskValue(text, label, rule.style);
  return maskWith(text, m, counts);
}

/** A ParameterStatus message (`raw`, whole) for setting `name` = `value`, masked; the same buffer when nothing changed. */
export function maskParameterStatus(raw: Buffer, name: string, value: string, m: CompiledMask, facts: SqlFacts | undefined, counts: MaskCounts): Buffer {
  if (!isFreeText(name)) return raw;
  const masked = maskStateText(value, name, m, facts, counts);
  return masked === value ? raw : message(raw[0]!, (w) => w.cstr(name).cstr(masked));
}

/** A NotificationResponse masked by its detectors, or its payload replaced whole (see above). */
export function maskNotificationAs(raw: Buffer, m: CompiledMask, facts: SqlFacts | undefined, counts: MaskCounts): Buffer {
  if (m.empty || !taintRule(m, facts)) return maskNotification(raw, m, counts);
  const pid = raw.readInt32BE(5);
  const channelEnd = raw.indexOf(0, 9);
  const channel = raw.toString("utf8", 9, channelEnd);
  const payload = raw.toString("utf8", channelEnd + 1, raw.length - 1);
  const masked = maskStateText(payload, "payload", m, facts, counts);
  return masked === payload ? raw : message(raw[0]!, (w) => w.i32(pid).cstr(channel).cstr(masked));
}
