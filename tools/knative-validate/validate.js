#!/usr/bin/env node
// Validates Kubernetes objects against the JSON schemas published on npm for the APIs
// Arbiter writes to: @kubernetes-models/knative (*.knative.dev), @kubernetes-models/gateway-api
// (gateway.networking.k8s.io) and @kubernetes-models/istio (*.istio.io). Objects of other
// groups (core, RBAC, CRDs, KServe, Arbiter's own) are counted and left alone: no package
// carries a schema for them. The schemas are the CRDs' OpenAPI schemas; CEL rules
// (x-kubernetes-validations) are not in them.
//
// Two modes:
//   node validate.js FILE.yaml [FILE.yaml ...]
//     Exit 0 when every object of those groups is valid, 1 when one is not (each problem
//     names the file, kind, name and field), 2 on bad usage or YAML.
//   node validate.js --serve
//     For the local API server: one JSON object per line on stdin, one JSON answer per line
//     on stdout, in order: {"checked": false} (no package covers the group),
//     {"checked": true, "errors": []} or {"checked": true, "errors": [ajv errors]}, or
//     {"error": "..."} (no schema for that apiVersion/kind, or a line that is not JSON).
import fs from "node:fs";
import readline from "node:readline";
import yaml from "js-yaml";

// Which package models a group's objects.
const PACKAGES = [
  [/\.knative\.dev$/, "@kubernetes-models/knative"],
  [/^gateway\.networking\.k8s\.io$/, "@kubernetes-models/gateway-api"],
  [/\.istio\.io$/, "@kubernetes-models/istio"],
];

function packageFor(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.slice(0, apiVersion.lastIndexOf("/")) : "";
  const found = PACKAGES.find(([pattern]) => pattern.test(group));
  return found ? found[1] : null;
}

// Where a package's schema is stricter than the CRD a cluster installs, the cluster wins:
// an object the API server accepts must not be refused here. Each entry names the upstream
// CRD that omits the requirement (tests/manifests pins them).
const LOOSER_ON_THE_CLUSTER = [
  // knative/serving config/core/300-resources/{service,configuration,revision}.yaml: a
  // container needs no name (Knative's webhook names it user-container).
  { group: /^serving\.knative\.dev$/, path: /\/containers\/\d+$/, missing: "name" },
  // knative/eventing config/core/resources/sinkbindings.yaml: status is not required.
  { group: /^sources\.knative\.dev$/, kind: "SinkBinding", path: /^$/, missing: "status" },
];

function looser(doc, error) {
  const group = doc.apiVersion.slice(0, Math.max(doc.apiVersion.lastIndexOf("/"), 0));
  return LOOSER_ON_THE_CLUSTER.some(
    (rule) =>
      error.keyword === "required" &&
      rule.group.test(group) &&
      (rule.kind === undefined || rule.kind === doc.kind) &&
      rule.path.test(error.instancePath) &&
      error.params.missingProperty === rule.missing,
  );
}

const models = new Map();

// The model class for apiVersion/kind, or an explanation of why there is none. An object of
// a modelled group without a model is an error, not a skip: most likely a typo in apiVersion.
async function modelFor(pkg, apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!models.has(key)) {
    let found;
    try {
      const module = await import(`${pkg}/${apiVersion}/${kind}`);
      found = typeof module[kind] === "function" ? { Model: module[kind] } : null;
    } catch (e) {
      found = null;
    }
    if (found === null) {
      try {
        await import(`${pkg}/${apiVersion}`);
        found = { error: `no schema for kind ${kind} in ${apiVersion}` };
      } catch (e) {
        found = { error: `no schema for apiVersion ${apiVersion}` };
      }
    }
    models.set(key, found);
  }
  return models.get(key);
}

// {checked, errors} or {error} for one object.
async function check(doc) {
  if (doc === null || typeof doc !== "object" || typeof doc.apiVersion !== "string" || !doc.kind) {
    return { error: "a document without apiVersion and kind" };
  }
  const pkg = packageFor(doc.apiVersion);
  if (pkg === null) return { checked: false };
  const { Model, error } = await modelFor(pkg, doc.apiVersion, doc.kind);
  if (error) return { error };
  try {
    new Model(doc).validate();
    return { checked: true, errors: [] };
  } catch (e) {
    const errors = (e.errors || [{ instancePath: "", keyword: "", params: {}, message: e.message }])
      .filter((error) => !looser(doc, error));
    const message = errors.map((error) => `data${error.instancePath} ${error.message}`).join(", ");
    return { checked: true, errors, message };
  }
}

function describe(doc) {
  const meta = doc.metadata || {};
  return `${doc.kind} ${meta.namespace ? meta.namespace + "/" : ""}${meta.name || "(unnamed)"}`;
}

async function validateFile(file, report) {
  let docs;
  try {
    docs = yaml.loadAll(fs.readFileSync(file, "utf8"));
  } catch (e) {
    report.fatal.push(`${file}: cannot read YAML: ${e.message}`);
    return;
  }
  for (const doc of docs) {
    if (doc === null || doc === undefined) continue;
    const result = await check(doc);
    if (result.error && typeof doc === "object" && doc.apiVersion && doc.kind) {
      report.failed.push(`${file}: ${describe(doc)}: ${result.error}`);
    } else if (result.error) {
      report.fatal.push(`${file}: ${result.error}`);
    } else if (!result.checked) {
      report.other += 1;
    } else if (result.errors.length > 0) {
      report.failed.push(`${file}: ${describe(doc)}: ${result.message}`);
    } else {
      report.ok.push(`${file}: ${describe(doc)}`);
    }
  }
}

async function files(argv) {
  const report = { ok: [], failed: [], fatal: [], other: 0 };
  for (const file of argv) await validateFile(file, report);
  for (const line of report.ok) process.stdout.write(`OK ${line}\n`);
  for (const line of report.failed) process.stderr.write(`INVALID ${line}\n`);
  for (const line of report.fatal) process.stderr.write(`ERROR ${line}\n`);
  process.stdout.write(
    `${report.ok.length} valid, ${report.failed.length} invalid objects; ` +
      `${report.other} other objects not checked\n`,
  );
  if (report.fatal.length > 0) return 2;
  return report.failed.length > 0 ? 1 : 0;
}

async function serve() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    let answer;
    try {
      answer = await check(JSON.parse(line));
    } catch (e) {
      answer = { error: `not a JSON object: ${e.message}` };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
  return 0;
}

const argv = process.argv.slice(2);
if (argv.length === 0) {
  process.stderr.write("usage: node validate.js FILE.yaml [FILE.yaml ...] | --serve\n");
  process.exitCode = 2;
} else {
  process.exitCode = argv[0] === "--serve" ? await serve() : await files(argv);
}
