/**
 * The transport algorithms agate speaks, to its clients and to targets:
 * modern ones only (no SHA-1, no CBC, no plain DH groups below 2048 bits).
 * ssh2 offers chacha20-poly1305 only where the runtime has the cipher (not
 * under Bun today): it is added when ssh2 says it can use it.
 */
import type { Algorithms } from "ssh2";
// ssh2 computes what the runtime supports at load time; its list is the truth for this process.
// @ts-expect-error ssh2 ships no types for its internal constants module
import constants from "ssh2/lib/protocol/constants.js";

const supportedCiphers: readonly string[] = (constants as { SUPPORTED_CIPHER: string[] }).SUPPORTED_CIPHER;

const CIPHERS = ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr", "aes192-ctr", "aes128-ctr"].filter((c) => supportedCiphers.includes(c));

export const SERVER_ALGORITHMS: Algorithms = {
  kex: ["curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "ecdh-sha2-nistp521"],
  serverHostKey: ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"],
  cipher: CIPHERS as Algorithms["cipher"],
  hmac: ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"],
  compress: ["none"],
} as Algorithms;

/** To targets: their host keys may also be ECDSA. */
export const CLIENT_ALGORITHMS: Algorithms = {
  ...SERVER_ALGORITHMS,
  serverHostKey: ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512", "rsa-sha2-256"],
} as Algorithms;
