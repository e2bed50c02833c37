#!/usr/bin/env node
// Validates every Knative object (apiVersion in a *.knative.dev group) in the YAML files
// named on the command line against the JSON schemas shipped by @kubernetes-models/knative.
// Objects of other groups (core, RBAC, CRDs, KServe, Istio) are counted and left alone:
// this package has no schema for them. Exit 0 when every Knative object is valid, 1 when
// one is not (each problem names the file, kind, name and field), 2 on bad usage or YAML.
//
// Usage: node validate.js FILE.yaml [FILE.yaml ...]
"use strict";

const fs = require("fs");
const yaml = require("js-yaml");

const KNATIVE_GROUP = /\.knative\.dev$/;

// The model class for apiVersion/kind, or an explanation of why there is none. A Knative
// object without a model is an error, not a skip: it is most likely a typo in apiVersion.
function modelFor(apiVersion, kind) {
  const slash = apiVersion.lastIndexOf("/");
  const group = apiVersion.slice(0, slash);
  const version = apiVersion.slice(slash + 1);
  let models;
  try {
    models = require(`@kubernetes-models/knative/${group}/${version}`);
  } catch (e) {
    return { error: `no schema for apiVersion ${apiVersion}` };
  }
  if (typeof models[kind] !== "function") {
    return { error: `no schema for kind ${kind} in ${apiVersion}` };
  }
  return { Model: models[kind] };
}

function describe(doc) {
  const meta = doc.metadata || {};
  return `${doc.kind} ${meta.namespace ? meta.namespace + "/" : ""}${meta.name || "(unnamed)"}`;
}

function validateFile(file, report) {
  let docs;
  try {
    docs = yaml.loadAll(fs.readFileSync(file, "utf8"));
  } catch (e) {
    report.fatal.push(`${file}: cannot read YAML: ${e.message}`);
    return;
  }
  for (const doc of docs) {
    if (doc === null || doc === undefined) continue;
    if (typeof doc !== "object" || typeof doc.apiVersion !== "string" || !doc.kind) {
      report.fatal.push(`${file}: a document without apiVersion and kind`);
      continue;
    }
    const group = doc.apiVersion.includes("/") ? doc.apiVersion.split("/")[0] : "";
    if (!KNATIVE_GROUP.test(group)) {
      report.other += 1;
      continue;
    }
    const { Model, error } = modelFor(doc.apiVersion, doc.kind);
    if (error) {
      report.failed.push(`${file}: ${describe(doc)}: ${error}`);
      continue;
    }
    try {
      new Model(doc).validate();
      report.ok.push(`${file}: ${describe(doc)}`);
    } catch (e) {
      report.failed.push(`${file}: ${describe(doc)}: ${e.message}`);
    }
  }
}

function main(argv) {
  if (argv.length === 0) {
    process.stderr.write("usage: node validate.js FILE.yaml [FILE.yaml ...]\n");
    return 2;
  }
  const report = { ok: [], failed: [], fatal: [], other: 0 };
  for (const file of argv) validateFile(file, report);
  for (const line of report.ok) process.stdout.write(`OK ${line}\n`);
  for (const line of report.failed) process.stderr.write(`INVALID ${line}\n`);
  for (const line of report.fatal) process.stderr.write(`ERROR ${line}\n`);
  process.stdout.write(
    `${report.ok.length} valid, ${report.failed.length} invalid Knative objects; ` +
      `${report.other} other objects not checked\n`,
  );
  if (report.fatal.length > 0) return 2;
  return report.failed.length > 0 ? 1 : 0;
}

process.exitCode = main(process.argv.slice(2));
