// Validates KafkaTopic resources (a JSON array on stdin) against Strimzi's kafka.strimzi.io/v1beta2 schema,
// as compiled in the @kubernetes-models/strimzi-kafka-operator npm package (installed into .local/node by
// scripts/install_k8s_tools.sh). Prints one list of errors per resource, as JSON. Used by tests/test_k8s.py.
import { pathToFileURL } from "node:url";
import { readFileSync } from "node:fs";

const [modules] = process.argv.slice(2);
const file = `${modules}/@kubernetes-models/strimzi-kafka-operator/_schemas/KafkaStrimziIoV1beta2KafkaTopic.js`;
const { validate } = await import(pathToFileURL(file).href);
const docs = JSON.parse(readFileSync(0, "utf8"));
const out = docs.map((d) =>
  validate(d) ? [] : validate.errors.map((e) => `${e.instancePath} ${e.keyword} ${JSON.stringify(e.params)}`),
);
process.stdout.write(JSON.stringify(out));
