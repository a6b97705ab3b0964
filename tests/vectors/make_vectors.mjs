// Cross-implementation vectors for mana-ai's crypto core (contract section 7).
//
// Usage: node tests/vectors/make_vectors.mjs > tests/vectors/grant_vectors.json
//
// Only WebCrypto (crypto.subtle) does the cryptography, because that is what
// the browser and the grant issuer use; Buffer is used for base64 only. Every
// run makes new random keys, so the committed JSON is the record the Rust
// tests read; re-running this script replaces it wholesale.

const subtle = globalThis.crypto.subtle;
const enc = new TextEncoder();
const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const random = (n) => globalThis.crypto.getRandomValues(new Uint8Array(n));

function pem(label, der) {
  const body = b64(der).match(/.{1,64}/g).join('\n');
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----\n`;
}

async function rsaKeyPair(modulusLength = 2048) {
  const pair = await subtle.generateKey(
    { name: 'RSA-OAEP', modulusLength, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true,
    ['encrypt', 'decrypt'],
  );
  return {
    pair,
    privatePem: pem('PRIVATE KEY', await subtle.exportKey('pkcs8', pair.privateKey)),
    publicPem: pem('PUBLIC KEY', await subtle.exportKey('spki', pair.publicKey)),
  };
}

// RSA-OAEP with the key's hash (SHA-256) for OAEP and MGF1, empty label.
async function wrap(publicKey, bytes) {
  return b64(await subtle.encrypt({ name: 'RSA-OAEP' }, publicKey, bytes));
}

// Exactly the issuer's derivation; `.sort()` is JavaScript's default sort
// (UTF-16 code units), which is the behaviour the Rust side must reproduce.
function grantInfo(tables, recordIds) {
  return `mana-ai-mission-grant:v1:tables=${[...tables].sort().join(',')}:ids=${[...recordIds].sort().join(',')}`;
}

async function deriveMdk(master, missionId, tables, recordIds) {
  const ikm = await subtle.importKey('raw', master, 'HKDF', false, ['deriveBits']);
  const bits = await subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: enc.encode(missionId), info: enc.encode(grantInfo(tables, recordIds)) },
    ikm,
    256,
  );
  return new Uint8Array(bits);
}

async function encValue(mdk, plaintextBytes, ivLength = 12) {
  const key = await subtle.importKey('raw', mdk, 'AES-GCM', false, ['encrypt']);
  const iv = random(ivLength);
  const ct = await subtle.encrypt({ name: 'AES-GCM', iv }, key, plaintextBytes);
  return `enc:1:${b64(iv)}.${b64(new Uint8Array(ct))}`;
}

const primary = await rsaKeyPair();
const other = await rsaKeyPair();
const weak = await rsaKeyPair(1024);
const ecdsa = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);

const master = random(32);
const missionId = 'mission-7f3a\u00e4-\u{1F680}';
const tables = ['tasks', 'notes', 'journal', 'calendar'];
// '\u{1F600}' (surrogates D83D DE00) sorts before '\uFF61' in UTF-16 order but
// after it in code point (and UTF-8 byte) order; '\uE000' likewise.
const recordIds = [
  'notes:\uFF61half',
  'tasks:t-2',
  'notes:\u{1F600}smile',
  'notes:\uE000private',
  'journal:j-1',
  'tasks:T-1',
];
const mdk = await deriveMdk(master, missionId, tables, recordIds);

const issuedAt = '2025-05-01T08:00:00.000Z';
const grant = (wrappedKey, expiresAt = '2099-12-31T23:59:59.000Z') => ({
  wrappedKey,
  derivation: { version: 'v1', missionId, tables, recordIds },
  issuedAt,
  expiresAt,
});

const wrappedKey = await wrap(primary.pair.publicKey, mdk);
const otherMdk = random(32);

const plain = (value) => enc.encode(JSON.stringify(value));
const values = [];
for (const [name, value] of [
  ['string', 'Zahnarzttermin am Dienstag'],
  ['number', 42.5],
  ['object', { title: 'Einkauf', items: ['Milch', 'Brot'], done: false, priority: 2 }],
  ['unicode', 'Gr\u00fc\u00dfe aus K\u00f6ln \u{1F600}\u{1F680} \u00c4\u00d6\u00dc \u4f60\u597d'],
  ['array', [1, 'zwei', null, { drei: 3 }]],
  ['null', null],
]) {
  values.push({ name, ciphertext: await encValue(mdk, plain(value)), expected: value });
}

const good = await encValue(mdk, plain('tamper me'));
const [goodIv, goodCt] = good.slice('enc:1:'.length).split('.');
const ctBytes = Buffer.from(goodCt, 'base64');
ctBytes[0] ^= 0x01;
const ivBytes = Buffer.from(goodIv, 'base64');
ivBytes[0] ^= 0x01;

const badValues = [
  { name: 'tampered-ciphertext', ciphertext: `enc:1:${goodIv}.${b64(ctBytes)}`, error: 'tag-mismatch' },
  { name: 'tampered-iv', ciphertext: `enc:1:${b64(ivBytes)}.${goodCt}`, error: 'tag-mismatch' },
  { name: 'wrong-key', ciphertext: await encValue(otherMdk, plain('other key')), error: 'tag-mismatch' },
  // WebCrypto accepts a 16-byte IV; the contract fixes it at 12.
  { name: 'iv-16-bytes', ciphertext: await encValue(mdk, plain('long iv'), 16), error: 'iv-length' },
  { name: 'no-separator', ciphertext: `enc:1:${goodIv}${goodCt}`, error: 'missing-separator' },
  { name: 'bad-base64', ciphertext: `enc:1:${goodIv}.not*base64!`, error: 'bad-base64' },
  { name: 'not-json', ciphertext: await encValue(mdk, enc.encode('kein {json')), error: 'not-json' },
  { name: 'not-utf8', ciphertext: await encValue(mdk, new Uint8Array([0xff, 0xfe, 0x22])), error: 'not-json' },
  { name: 'plaintext', ciphertext: 'just text', error: 'not-encrypted' },
];

const vectors = {
  comment: 'Generated by tests/vectors/make_vectors.mjs with WebCrypto (Node ' + process.version + '). Test keys only.',
  privateKeyPem: primary.privatePem,
  publicKeyPem: primary.publicPem,
  otherPrivateKeyPem: other.privatePem,
  weakPrivateKeyPem: weak.privatePem,
  ecdsaPrivateKeyPem: pem('PRIVATE KEY', await subtle.exportKey('pkcs8', ecdsa.privateKey)),
  masterKey: b64(master),
  missionId,
  tables,
  recordIds,
  info: grantInfo(tables, recordIds),
  mdk: b64(mdk),
  grant: grant(wrappedKey),
  failingGrants: [
    { name: 'expired', grant: grant(wrappedKey, '2001-01-01T00:00:00.000Z'), reason: 'expired' },
    { name: 'unparseable-expiry', grant: grant(wrappedKey, 'next tuesday'), reason: 'expired' },
    { name: 'bad-base64', grant: grant('%%not base64%%'), reason: 'malformed' },
    { name: 'short-mdk', grant: grant(await wrap(primary.pair.publicKey, mdk.slice(0, 31))), reason: 'malformed' },
    { name: 'wrapped-for-other-key', grant: grant(await wrap(other.pair.publicKey, mdk)), reason: 'wrap-rejected' },
    { name: 'truncated-wrap', grant: grant(b64(Buffer.from(wrappedKey, 'base64').subarray(1))), reason: 'wrap-rejected' },
  ],
  values,
  badValues,
};

process.stdout.write(JSON.stringify(vectors, null, 2) + '\n');
