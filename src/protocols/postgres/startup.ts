/**
 * The settings a StartupMessage asks for, read as PostgreSQL reads them, so
 * that the session-stage policy decides on exactly what the target will set.
 *
 * Every startup parameter other than `user`, `database`, `replication`,
 * `options` and the protocol's `_pq_.` options names a setting (PostgreSQL
 * process_startup_options: SetConfigOption for each). `options` is a command
 * line: split into words as pg_split_opts does (whitespace separates, a
 * backslash makes the next character literal), then read as
 * process_postgres_switches reads it, where `-c name=value`,
 * `-cname=value` and `--name=value` set a setting (ParseLongOption: the
 * name's dashes become underscores). The other switches (-B, -F, -O, -P, -W,
 * …) change the backend in ways no setting policy describes, so they are
 * refused, as is anything else on the line.
 *
 * The target then gets the settings as separate startup parameters, never
 * the client's `options` text: what it sets is what the policy saw. Order is
 * kept as PostgreSQL applies it: the settings of `options` first, then the
 * parameters, a later one of the same name (case-insensitive, as setting
 * names are) replacing an earlier one.
 */
import { AgateError } from "../../core/errors.ts";
import type { StartupSetting } from "../../core/guard.ts";

/** Startup parameters that are not settings. */
const NOT_SETTINGS = new Set(["user", "database", "replication", "options"]);

/** C isspace() in the C locale: what pg_split_opts splits on. */
const SPACE = new Set([" ", "\t", "\n", "\v", "\f", "\r"]);

/** pg_split_opts: words separated by whitespace, a backslash taking the next character literally. */
export function splitOptions(text: string): string[] {
  const words: string[] = [];
  let i = 0;
  while (i < text.length) {
    while (i < text.length && SPACE.has(text[i]!)) i++;
    if (i >= text.length) break;
    let word = "";
    let escaped = false;
    for (; i < text.length; i++) {
      const c = text[i]!;
      if (SPACE.has(c) && !escaped) break;
      if (!escaped && c === "\\") escaped = true;
      else {
        escaped = false;
        word += c;
      }
    }
    words.push(word);
  }
  return words;
}

/**
 * The settings of an `options` command line.
 *
 * @throws AgateError STARTUP_OPTIONS (sqlstate 42601 or 0A000) for a switch
 *   other than -c/--, a setting without a value, or a word that is no switch.
 */
export function optionSettings(text: string): StartupSetting[] {
  const words = splitOptions(text);
  const out: StartupSetting[] = [];
  for (let i = 0; i < words.length; i++) {
    const w = words[i]!;
    let arg: string;
    let flag: string;
    if (w.startsWith("--") && w.length > 2) {
      flag = "--";
      arg = w.slice(2);
    } else if (w === "-c" || (w.startsWith("-c") && w.length > 2)) {
      flag = "-c";
      if (w.length > 2) arg = w.slice(2);
      else {
        if (i + 1 >= words.length) throw optionsError("42601", `-c needs a name=value argument`);
        arg = words[++i]!;
      }
    } else {
      throw optionsError("0A000", `"${w}" is not supported through the gateway: only settings (-c name=value or --name=value) may be given`);
    }
    const eq = arg.indexOf("=");
    if (eq < 0) throw optionsError("42601", `${flag === "--" ? `--${arg}` : `-c ${arg}`} requires a value`);
    out.push({ name: arg.slice(0, eq).replaceAll("-", "_"), value: arg.slice(eq + 1), from: "options" });
  }
  return out;
}

function optionsError(sqlstate: string, sentence: string): AgateError {
  return new AgateError("STARTUP_OPTIONS", `startup parameter "options": ${sentence}`, { sqlstate });
}

/**
 * Every setting the startup parameters ask for, in the order PostgreSQL
 * applies them, one per name (the last of a name wins, keeping its spelling).
 * Throws as optionSettings does.
 */
export function startupSettings(params: Record<string, string>): StartupSetting[] {
  const all: StartupSetting[] = params.options !== undefined ? optionSettings(params.options) : [];
  for (const [name, value] of Object.entries(params)) {
    if (!NOT_SETTINGS.has(name) && !name.startsWith("_pq_.")) all.push({ name, value, from: "parameter" });
  }
  const last = new Map<string, StartupSetting>();
  for (const s of all) {
    last.delete(s.name.toLowerCase()); // re-inserted: the map's order is the order they take effect
    last.set(s.name.toLowerCase(), s);
  }
  return [...last.values()];
}

/** The startup parameters for the target: the settings, each as its own parameter. */
export function targetParameters(settings: readonly StartupSetting[]): Record<string, string> {
  return Object.fromEntries(settings.map((s) => [s.name, s.value]));
}
