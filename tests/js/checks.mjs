// What every OpenAI-client test script here shares: its settings from the environment, and
// checks that print "ok NAME" / "FAIL NAME ..." and end with "N passed, M failed".

// The values of the environment variables `names`; when one is missing, "FAIL setup" and exit 2.
export function settings(...names) {
  const values = names.map((n) => process.env[n]);
  if (values.some((v) => !v)) {
    console.log(`FAIL setup: set ${names.join(', ')}`);
    process.exit(2);
  }
  return values;
}

let passed = 0;
let failed = 0;

// Runs one check; a thrown error (an assertion, a rejected request) fails it.
export async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e?.stack ?? e}`);
  }
}

// Prints the tally (after `prefix`) and exits 1 when any check failed.
export function finish(prefix = '') {
  console.log(`${prefix}${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
