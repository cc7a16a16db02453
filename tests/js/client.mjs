// Drives the official JavaScript client (npm `replicate`, pinned in package.json) against a cogkit
// gateway, for tests/test_gateway_js.py. Usage: node client.mjs SCENARIO '<json args>'
// with REPLICATE_API_TOKEN and COGKIT_GATEWAY_URL set (and NODE_EXTRA_CA_CERTS for the test's TLS
// certificate). Prints one JSON object per line: what the client returned, or the error it raised.
import Replicate from "replicate";

const replicate = new Replicate({
  auth: process.env.REPLICATE_API_TOKEN,
  baseUrl: `${process.env.COGKIT_GATEWAY_URL}/v1`,
});

const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

// The client's ApiError carries the HTTP response; other errors (a failed prediction) do not.
function describeError(error) {
  return { error: error.name, message: error.message, status: error.response ? error.response.status : null };
}

// A FileOutput is a ReadableStream with url() and blob(); read it as the client's users do.
async function readFileOutput(output) {
  const bytes = Buffer.from(await (await output.blob()).arrayBuffer());
  return { url: output.url().toString(), size: bytes.length, head: bytes.subarray(0, 4).toString("hex") };
}

const scenarios = {
  // replicate.run: blocks (Prefer: wait), then returns the output
  async run({ model, input }) {
    const output = await replicate.run(model, { input });
    print({ output });
  },

  // replicate.stream: creates the prediction, then reads urls.stream as handed out (no token)
  async stream({ model, input }) {
    for await (const event of replicate.stream(model, { input })) {
      print({ event: event.event, id: event.id, data: event.data });
    }
  },

  // predictions.create / get / list / cancel on a long prediction, wait on a short one
  async lifecycle({ model, long, short }) {
    const created = await replicate.predictions.create({ model, input: long });
    print({ step: "create", id: created.id, status: created.status, urls: created.urls });
    let got = await replicate.predictions.get(created.id);
    for (let i = 0; i < 600 && !(got.status === "processing" && (got.output || []).length >= 3); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      got = await replicate.predictions.get(created.id);
    }
    print({ step: "get", id: got.id, status: got.status, outputs: (got.output || []).length });
    const canceled = await replicate.predictions.cancel(created.id);
    print({ step: "cancel", id: canceled.id, status: canceled.status });
    const done = await replicate.wait(await replicate.predictions.create({ model, input: short }), {});
    print({ step: "wait", id: done.id, status: done.status, output: done.output, metrics: done.metrics });
    const page = await replicate.predictions.list();
    print({ step: "list", ids: page.results.map((p) => p.id), next: page.next,
            statuses: Object.fromEntries(page.results.map((p) => [p.id, p.status])) });
    const final = await replicate.wait(await replicate.predictions.get(created.id), {});
    print({ step: "final", id: final.id, status: final.status, outputs: (final.output || []).length });
  },

  // a file input (a Buffer, uploaded through POST /v1/files by the client) and file outputs
  async files({ model, input, fileInput, path }) {
    const fs = await import("node:fs");
    const outputs = await replicate.run(model, { input: { ...input, [fileInput]: fs.readFileSync(path) } });
    const files = [];
    for (const output of Array.isArray(outputs) ? outputs : [outputs]) {
      if (typeof output === "string") {
        files.push({ plain: output }); // the client wraps only https: and data: URLs
      } else {
        files.push(await readFileOutput(output));
      }
    }
    print({ files });
  },

  // errors the gateway answers: run with bad input (422), get of an unknown id (404)
  async errors({ model, badInput }) {
    try {
      await replicate.run(model, { input: badInput });
      print({ call: "run", error: null });
    } catch (error) {
      print({ call: "run", ...describeError(error) });
    }
    try {
      await replicate.predictions.get("nosuchprediction");
      print({ call: "get", error: null });
    } catch (error) {
      print({ call: "get", ...describeError(error) });
    }
  },
};

const [scenario, args] = process.argv.slice(2);
try {
  await scenarios[scenario](JSON.parse(args || "{}"));
} catch (error) {
  print({ uncaught: describeError(error) });
  process.exitCode = 1;
}
