// The public inference API from Node.js: the .proto files loaded at run time
// (no generated code), a real router at $CAIRN_ROUTER_ADDR serving $CAIRN_ROUTER_MODEL.
//   CAIRN_ROUTER_ADDR=127.0.0.1:50051 CAIRN_ROUTER_MODEL=tiny-llama node --test tests/node/router.test.mjs
// Without CAIRN_ROUTER_ADDR these tests are skipped (the registry's run of this folder sets none).
import assert from "node:assert/strict";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const address = process.env.CAIRN_ROUTER_ADDR;
const model = process.env.CAIRN_ROUTER_MODEL || "tiny-llama";
const skip = address ? false : "set CAIRN_ROUTER_ADDR to a router's host:port";
const includeDirs = [path.resolve(here, "../../protos")];
if (process.env.CAIRN_PROTO_INCLUDE) includeDirs.push(process.env.CAIRN_PROTO_INCLUDE);

const definition = protoLoader.loadSync("cairn/v1/inference.proto", {
  includeDirs,
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { cairn } = grpc.loadPackageDefinition(definition);

function connect() {
  return new cairn.v1.Inference(address, grpc.credentials.createInsecure());
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 60_000);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function collect(stream) {
  return new Promise((resolve, reject) => {
    const messages = [];
    stream.on("data", (message) => messages.push(message));
    stream.on("error", reject);
    stream.on("end", () => resolve(messages));
  });
}

const greedy = (maxTokens) => ({
  sampling: { temperature: 0 },
  stop: { max_tokens: maxTokens },
});

test("stream a generation from the router", { skip }, async () => {
  const client = connect();
  try {
    const request = { model, text: "Once upon a time", options: greedy(16) };
    const messages = await collect(client.GenerateStream(request, { deadline: new Date(Date.now() + 60_000) }));
    const deltas = messages.flatMap((m) => m.deltas);
    assert.ok(deltas.length >= 2, "a stream of several deltas");
    const streamed = deltas.map((d) => d.text).join("");
    assert.ok(streamed.length > 0);
    assert.notEqual(deltas.at(-1).finish_reason, "FINISH_REASON_UNSPECIFIED");

    const last = messages.at(-1);
    assert.equal(last.deltas.length, 0);
    const tokens = deltas.reduce((n, d) => n + d.tokens.length, 0);
    assert.equal(last.usage.completion_tokens, tokens);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + tokens);

    // The unary call returns the same greedy text.
    const whole = await unary(client, "Generate", request);
    assert.equal(whole.completions[0].text, streamed);
  } finally {
    client.close();
  }
});

test("list models and chat", { skip }, async () => {
  const client = connect();
  try {
    const listed = await unary(client, "ListModels", {});
    assert.ok(listed.models.some((m) => m.id === model));
    const answer = await unary(client, "Chat", {
      model,
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: "Hello from Node.js" },
      ],
      options: greedy(8),
    });
    assert.equal(answer.choices[0].message.role, "assistant");
    assert.ok(answer.usage.prompt_tokens > 0);
  } finally {
    client.close();
  }
});

test("an unknown model is NOT_FOUND, naming the served ones", { skip }, async () => {
  const client = connect();
  try {
    await assert.rejects(unary(client, "Generate", { model: "no-such-model", text: "x" }), (err) => {
      assert.equal(err.code, grpc.status.NOT_FOUND);
      assert.match(err.details, new RegExp(`available models: .*${model}`));
      return true;
    });
  } finally {
    client.close();
  }
});
