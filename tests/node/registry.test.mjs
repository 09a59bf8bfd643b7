// The registry contract from Node.js: the .proto files loaded at run time
// (no generated code), a real server at $CAIRN_REGISTRY_ADDR.
//   CAIRN_REGISTRY_ADDR=127.0.0.1:50055 node --test tests/node/
// CAIRN_PROTO_INCLUDE may name a directory holding google/protobuf/*.proto;
// otherwise protobufjs' bundled well-known types are used.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const address = process.env.CAIRN_REGISTRY_ADDR;
const includeDirs = [path.resolve(here, "../../protos")];
if (process.env.CAIRN_PROTO_INCLUDE) includeDirs.push(process.env.CAIRN_PROTO_INCLUDE);

const definition = protoLoader.loadSync("cairn/v1/registry.proto", {
  includeDirs,
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { cairn } = grpc.loadPackageDefinition(definition);

const sha256 = (data) => createHash("sha256").update(data).digest("hex");

function connect() {
  assert.ok(address, "set CAIRN_REGISTRY_ADDR to the registry's host:port");
  return new cairn.v1.Registry(address, grpc.credentials.createInsecure());
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function upload(client, header, chunks) {
  return new Promise((resolve, reject) => {
    const stream = client.UploadArtifact((err, response) => (err ? reject(err) : resolve(response)));
    stream.write({ header });
    for (const chunk of chunks) stream.write({ chunk });
    stream.end();
  });
}

function download(client, ref, artifactPath) {
  return new Promise((resolve, reject) => {
    const messages = [];
    const stream = client.DownloadArtifact({ ref: { ref }, path: artifactPath, offset: 0 });
    stream.on("data", (message) => messages.push(message));
    stream.on("error", reject);
    stream.on("end", () => resolve(messages));
  });
}

test("push, finalize, resolve, download and list a model from Node.js", async () => {
  const client = connect();
  const prefix = `node-${randomBytes(6).toString("hex")}`;
  const name = `${prefix}/contract`;
  try {
    const model = await unary(client, "CreateModel", {
      name,
      description: "pushed from node",
      labels: { client: "grpc-js" },
    });
    assert.equal(model.name, name);
    assert.equal(model.latest_version, 0);

    const draft = await unary(client, "CreateVersion", {
      model: name,
      format: "hf-model",
      recipe: { fields: { method: { stringValue: "node-contract" }, epochs: { numberValue: 2 } } },
    });
    assert.equal(draft.number, 1);
    assert.equal(draft.state, "VERSION_STATE_DRAFT");

    const content = Buffer.concat([Buffer.from('{"model_type": "llama"}'), randomBytes(100_000)]);
    const digest = sha256(content);
    const artifact = await upload(
      client,
      { model: name, version: draft.number, path: "config.json", size: content.length, sha256: digest },
      [content.subarray(0, 40_000), content.subarray(40_000)],
    );
    assert.equal(artifact.sha256, digest);
    assert.equal(Number(artifact.size), content.length);

    const final = await unary(client, "FinalizeVersion", {
      model: name,
      version: draft.number,
      aliases: ["production"],
    });
    assert.equal(final.state, "VERSION_STATE_READY");
    assert.deepEqual(final.aliases, ["production"]);

    const latest = await unary(client, "GetVersion", { ref: { ref: `${name}@latest` } });
    assert.equal(latest.number, 1);
    assert.equal(latest.digest, sha256(`${digest}  config.json\n`), "digest = sha256 of the sha256sum manifest");
    assert.equal(latest.recipe.fields.method.stringValue, "node-contract");
    assert.deepEqual(
      latest.artifacts.map((a) => [a.path, a.sha256]),
      [["config.json", digest]],
    );

    const messages = await download(client, `${name}@production`, "config.json");
    assert.equal(messages[0].payload, "header");
    assert.equal(messages[0].header.sha256, digest);
    const received = Buffer.concat(messages.slice(1).map((m) => m.chunk));
    assert.equal(sha256(received), digest);

    const listed = await unary(client, "ListModels", { name_prefix: prefix, page_size: 10 });
    assert.deepEqual(
      listed.models.map((m) => [m.name, m.latest_version]),
      [[name, 1]],
    );
    assert.equal(listed.next_page_token, "");
  } finally {
    client.close();
  }
});

test("errors arrive as gRPC status codes with actionable messages", async () => {
  const client = connect();
  try {
    await assert.rejects(unary(client, "GetVersion", { ref: { ref: "no-such-model-anywhere@3" } }), (err) => {
      assert.equal(err.code, grpc.status.NOT_FOUND);
      assert.match(err.details, /not found/);
      return true;
    });
    await assert.rejects(unary(client, "GetVersion", { ref: { ref: "bad@@ref" } }), (err) => {
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /a reference is/);
      return true;
    });
  } finally {
    client.close();
  }
});
