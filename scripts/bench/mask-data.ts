/**
 * The values of the masking benchmark's table (scripts/bench/mask-stack.ts
 * builds it in SQL from these; scripts/bench/mask-rows.ts builds the same
 * rows in process).
 */
export const FIRST = ["Anna", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Keiko", "Lars", "Maria", "Nikolai", "Olga", "Pedro"];
export const LAST = ["Smith", "Müller", "Rossi", "Ivanova", "García", "Nakamura", "Dubois", "Kowalski", "Andersen", "Silva", "Novak", "Schmidt", "Jensen", "Moreau", "Costa", "Fischer"];
export const NOTES = [
  "Asked about delivery times for order %; prefers written contact and will follow up next week about the loyalty programme.",
  "Reported a damaged parcel for order % early in March; a replacement was sent and the refund approved by the support team.",
  "Wants the invoice for order % split into two payments; finance agreed, the second instalment is due at the end of the month.",
  "Changed the delivery slot for order % twice; the courier now leaves parcels with the neighbour if nobody answers the door.",
];
