"""A float32 or int8 model's forward (decode steps and prompt chunks) as one onnxruntime graph, on CPU.

Why: measured side by side on SmolLM2-135M (one thread, in-process, docs "stop 32"), a whole decode step
as one onnxruntime graph took 28.5 ms for one row against 38.2 ms for the torch model's, and 47.2 against
63.6 ms for eight rows, logits within 7e-5. The gain is onnxruntime's GEMM (MLAS, on weights it
packs once: the 121 projections alone 30-32 ms against MKL's 35-41 for one row), and one call a step
instead of ~1,500 small ops issued from Python. onnxruntime is already a runtime dependency (TTS);
the graph is written with the onnx package's protobuf classes (see `onnx_proto`).

What runs where: decode steps and prompt chunks (one call per prompt) run here, reading and writing
the torch model's own KV cache in place (io-binding on its buffers), so the engine's slots, prefix
cache and compaction work unchanged; before the graph is ready, the torch model runs both. Attention is onnxruntime's `GroupQueryAttention`,
which rotates queries and keys itself (from the model's rotary table), writes each row's new key
and value at its own length and attends over that length only.

An int8 build's projections run as `MatMulIntegerToFloat` (MLAS's integer GEMM) on its int8 rows,
with Int8Linear's quantisation of the activations (each row divided by its own absmax, then fixed
parameters): a row's result depends on that row only, so a batched step gives each row the bits it
gets alone. On SmolLM2 (one thread, in-process) a decode step took 13.6 ms for one row against 25.8
for torch's int8 step (fbgemm), and 23.5 against 45.8 ms for eight. Its text is not torch's int8
text: int8 rounding amplifies the engines' float differences (perplexity on scripts/llm_quality.py's
text 6.91 here, 6.99 on torch's int8, 6.70 float32), so an int8 model's requests wait for the graph
(BatchEngine.graph_pending) rather than answer otherwise in the seconds before it is ready.

The graph is built from the loaded model's weights at the end of setup, on a thread of its own: until
it is ready (~2 s) prompts and decode steps run on torch. Models it does not cover (q/k norms, biases, sliding
windows) keep torch's forward.
"""

import importlib.util
import threading
import time
from functools import cache
from pathlib import Path

import numpy as np
import torch

from models.llm.llama import Int8Linear, Llama, LlamaConfig, available_memory, rope_table


def covers(cfg: LlamaConfig, model: Llama) -> str | None:
    """Why this graph cannot run a model's forward, or None when it can."""
    if model.dtype != torch.float32 or model.device.type != "cpu":
        return "only float32 (or int8) on CPU"
    if cfg.qk_norm or cfg.attention_bias or cfg.o_proj_bias or cfg.mlp_bias:
        return "q/k norms or biases"
    if any(cfg.sliding_layers):
        return "sliding-window layers"
    return None


def forward_graph(model: Llama):
    """The ONNX graph of one forward: input_ids [B, S], seqlens_k [B] (each row's length after these
    tokens, minus one), total_len, and per layer the cache as past_*/present_* [B, kv heads, cache
    length, head dim] (bound to the same buffer: written in place). Output: the logits of each row's
    last token [B, vocab].
    Returns the graph and its weights by name (numpy arrays over the model's tensors where their
    layout allows, copies where not)."""
    pb = onnx_proto()
    cfg = model.cfg
    state = {k: v.detach() for k, v in model.state_dict().items()}
    nodes, declared, arrays = [], [], {}

    def weight(name: str, t: torch.Tensor) -> str:
        # Declared in the graph as external data and handed to onnxruntime as arrays over the torch
        # tensors' memory (`add_external_initializers`): copying 0.5 GB into the protobuf took ~15 s of
        # Python, holding the GIL that the engine thread needs.
        arrays[name] = t.contiguous().numpy()
        declared.append(external_tensor(name, arrays[name]))
        return name

    def op(kind: str, inputs: list[str], outputs: list[str], **attrs) -> str:
        domain = "com.microsoft" if kind in ("GroupQueryAttention", "MatMulIntegerToFloat") else ""
        nodes.append(pb.NodeProto(op_type=kind, input=inputs, output=outputs, domain=domain,
                                  attribute=[attribute(key, value) for key, value in attrs.items()]))
        return outputs[0]

    def rms_norm(x: str, key: str, name: str) -> str:
        return op("SimplifiedLayerNormalization", [x, weight(name + ".w", state[key])], [name],
                  axis=-1, epsilon=cfg.rms_norm_eps)

    def linear(x: str, key: str, name: str) -> str:  # torch stores [out, in]; MatMul takes [in, out]
        module = model.get_submodule(key.removesuffix(".weight"))
        if isinstance(module, Int8Linear):
            return int8_linear(x, module, name)
        return op("MatMul", [x, weight(name + ".w", state[key].t().contiguous())], [name])

    def int8_linear(x: str, module: Int8Linear, name: str) -> str:
        """What Int8Linear computes: each row divided by its own absmax and quantised with fixed
        parameters, the integer GEMM, then the scales. A row's result depends on that row only, so it
        is the same alone or batched; on a VNNI CPU the integer sums are exact, as fbgemm's are."""
        q, scale = module.int8_weight()
        absmax = op("Max", [op("ReduceMax", [op("Abs", [x], [name + ".abs"])], [name + ".amax"], axes=[-1]),
                            "tiny"], [name + ".absmax"])
        x_q = op("QuantizeLinear", [op("Div", [x, absmax], [name + ".unit"]), "x_scale", "x_zero_point"],
                 [name + ".q"])
        y = op("MatMulIntegerToFloat", [x_q, weight(name + ".w", q.t().contiguous()), "x_scale",
                                        weight(name + ".scale", scale), "x_zero_point"], [name + ".y"])
        return op("Mul", [y, absmax], [name])

    hd, kv_heads = cfg.head_dim, cfg.num_key_value_heads
    # The model's rotary table holds [cos | cos] and [-sin | sin] per position; the op wants halves.
    rope = rope_table(cfg, torch.float32, "cpu")
    cos = weight("cos", rope[0, :, : hd // 2].contiguous())
    sin = weight("sin", (-rope[1, :, : hd // 2]).contiguous())
    split = "gate_up_split"  # small, and read by shape inference: stored in the graph
    declared.append(constant(split, np.array([cfg.intermediate_size] * 2, dtype=np.int64)))
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        # An int8 model's activations: [-1, 1] to uint8 0..255 (Int8Linear.X_SCALE, X_ZERO_POINT).
        declared += [constant("x_scale", np.array(Int8Linear.X_SCALE, dtype=np.float32)),
                     constant("x_zero_point", np.array(Int8Linear.X_ZERO_POINT, dtype=np.uint8)),
                     constant("tiny", np.array(1e-30, dtype=np.float32))]
    cache_dims = ["B", kv_heads, "cache_len", hd]
    inputs = [value_info("input_ids", np.int64, ["B", "S"]), value_info("seqlens_k", np.int32, ["B"]),
              value_info("total_len", np.int32, [])]
    outputs = [value_info("logits", np.float32, ["B", cfg.vocab_size])]
    x = op("Gather", [weight("embed", state["model.embed_tokens.weight"]), "input_ids"], ["x0"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for kind in ("key", "value"):
            inputs.append(value_info(f"past_{kind}.{i}", np.float32, cache_dims))
            outputs.append(value_info(f"present_{kind}.{i}", np.float32, cache_dims))
        qkv = linear(rms_norm(x, p + "input_layernorm.weight", f"ln1.{i}"), p + "self_attn.qkv_proj.weight", f"qkv.{i}")
        attn = op("GroupQueryAttention",
                  [qkv, "", "", f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_len", cos, sin],
                  [f"attn.{i}", f"present_key.{i}", f"present_value.{i}"],
                  num_heads=cfg.num_attention_heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0)
        x = op("Add", [x, linear(attn, p + "self_attn.o_proj.weight", f"o.{i}")], [f"x{i}a"])
        gate_up = linear(rms_norm(x, p + "post_attention_layernorm.weight", f"ln2.{i}"),
                         p + "mlp.gate_up_proj.weight", f"gate_up.{i}")
        gate, up = f"gate.{i}", f"up.{i}"
        op("Split", [gate_up, split], [gate, up], axis=-1)
        silu = op("Mul", [gate, op("Sigmoid", [gate], [f"sigmoid.{i}"])], [f"silu.{i}"])
        down = linear(op("Mul", [silu, up], [f"act.{i}"]), p + "mlp.down_proj.weight", f"down.{i}")
        x = op("Add", [x, down], [f"x{i + 1}"])
    last = "last_index"  # each row's last token: the only logits the engine reads
    declared.append(constant(last, np.array(-1, dtype=np.int64)))
    x = op("Gather", [x, last], ["x_last"], axis=1)
    linear(rms_norm(x, "model.norm.weight", "norm"), "lm_head.weight", "logits")
    graph = pb.GraphProto(node=nodes, name="forward", input=inputs, output=outputs, initializer=declared)
    onnx_model = pb.ModelProto(ir_version=9, graph=graph, opset_import=[pb.OperatorSetIdProto(domain="", version=17),
                                                                        pb.OperatorSetIdProto(domain="com.microsoft", version=1)])
    return onnx_model, arrays


@cache
def onnx_proto():
    """The onnx package's generated protobuf classes (ModelProto, NodeProto, ...), loaded on their own.
    `import onnx` also initialises its C extension, which registers every operator schema holding the
    GIL for ~0.7 s: on the build thread, that stalled the engine thread serving the first requests after
    boot (their first token 0.66-0.76 s after READY against 0.10-0.13 on torch). These classes load in
    ~20 ms, and writing a graph needs nothing else."""
    package = Path(importlib.util.find_spec("onnx").origin).parent  # found, not imported
    spec = importlib.util.spec_from_file_location("onnx.onnx_ml_pb2", package / "onnx_ml_pb2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ONNX_TYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3, np.dtype(np.int32): 6,
               np.dtype(np.int64): 7}  # TensorProto.DataType


def attribute(name: str, value):
    pb = onnx_proto()
    if isinstance(value, int):
        return pb.AttributeProto(name=name, type=pb.AttributeProto.INT, i=value)
    if isinstance(value, float):
        return pb.AttributeProto(name=name, type=pb.AttributeProto.FLOAT, f=value)
    return pb.AttributeProto(name=name, type=pb.AttributeProto.INTS, ints=list(value))


def value_info(name: str, dtype, shape: list):
    """A graph input or output: its element type and shape (a str is a dimension named, not fixed)."""
    pb = onnx_proto()
    dims = [pb.TensorShapeProto.Dimension(dim_param=d) if isinstance(d, str) else pb.TensorShapeProto.Dimension(dim_value=d)
            for d in shape]
    tensor = pb.TypeProto.Tensor(elem_type=_ONNX_TYPES[np.dtype(dtype)], shape=pb.TensorShapeProto(dim=dims))
    return pb.ValueInfoProto(name=name, type=pb.TypeProto(tensor_type=tensor))


def constant(name: str, array: np.ndarray):
    """A small initializer stored in the graph itself."""
    return onnx_proto().TensorProto(name=name, dims=array.shape, data_type=_ONNX_TYPES[array.dtype],
                                    raw_data=array.tobytes())


def external_tensor(name: str, array: np.ndarray):
    """A graph initializer that names its data without holding it (the data comes with the session)."""
    pb = onnx_proto()
    tensor = pb.TensorProto(name=name, dims=array.shape, data_location=pb.TensorProto.EXTERNAL,
                            data_type=_ONNX_TYPES[array.dtype])
    for key, value in (("location", "session-initializers"), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


_NUMPY = {torch.float32: np.float32, torch.int32: np.int32, torch.int64: np.int64}


class OrtForward:
    """`forward(ids, lengths, first_slot)`: the logits [B, vocab] of each row's last token, for rows of
    new tokens `ids` [B, S] in cache slots first_slot.. (a decode step: S = 1; a prompt chunk: one row
    of S tokens), `lengths` being each row's filled length once they are in."""

    def __init__(self, model: Llama, threads: int):
        import onnxruntime as ort

        self.model = model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        graph, self.weights = forward_graph(model)  # kept: onnxruntime reads the arrays it was given
        names = list(self.weights)
        options.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(self.weights[n]) for n in names])
        self.session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.binding, self.cache_bound = None, None

    def __call__(self, ids: torch.Tensor, lengths: list[int], first_slot: int = 0) -> torch.Tensor:
        rows = ids.shape[0]
        self._bind_cache(first_slot, rows)
        # The op takes each row's new tokens to end at its length: rows of one call share S, so a
        # prompt chunk runs as a call of its own.
        seqlens = torch.tensor([n - 1 for n in lengths], dtype=torch.int32)
        total = torch.tensor(max(lengths), dtype=torch.int32)
        logits = torch.empty(rows, self.model.cfg.vocab_size)
        for name, t in (("input_ids", ids), ("seqlens_k", seqlens), ("total_len", total)):
            bind(self.binding.bind_input, name, t)
        bind(self.binding.bind_output, "logits", logits)
        self.session.run_with_iobinding(self.binding)
        return logits

    def _bind_cache(self, first_slot: int, rows: int) -> None:
        """Bind each layer's cache slots first_slot.. as its past and its present (the same memory: written
        in place). Kept from call to call while the slots and the buffers stay the same (a run of decode
        steps): binding 4 x layers tensors from Python costs ~1 ms a call."""
        cache0 = self.model.model.layers[0].self_attn.kv_cache
        where = (first_slot, rows, cache0.k.data_ptr(), tuple(cache0.k.shape))  # a grown cache is new memory
        if where == self.cache_bound:
            return
        self.binding, self.cache_bound = self.session.io_binding(), where
        slots = slice(first_slot, first_slot + rows)
        for i, layer in enumerate(self.model.model.layers):
            cache = layer.self_attn.kv_cache
            for kind, buffer in (("key", cache.k[slots]), ("value", cache.v[slots])):
                bind(self.binding.bind_input, f"past_{kind}.{i}", buffer)
                bind(self.binding.bind_output, f"present_{kind}.{i}", buffer)


def bind(method, name: str, t: torch.Tensor) -> None:
    assert t.is_contiguous()
    method(name, "cpu", 0, _NUMPY[t.dtype], list(t.shape), t.data_ptr())


def build_in_background(model: Llama, threads: int) -> threading.Thread | None:
    """Build the graph on a thread and hand it to the model (`model.ort_forward`, which the engine then
    calls for prompt chunks and decode steps) when ready; None (and a setup line) when the model is
    one it does not cover."""
    reason = covers(model.cfg, model)
    size = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(  # int8 rows are no parameters
        m.in_features * m.out_features for m in model.modules() if isinstance(m, Int8Linear))
    if reason is None and size > available_memory() / 2:  # its packed copy of the weights
        reason = f"a model of {size / 1e9:.1f} GB with {available_memory() / 1e9:.1f} GB of memory available"
    if reason is not None:
        print(f"setup: prompts and decode steps run on torch (onnxruntime's graph does not cover {reason})", flush=True)
        return None

    def build() -> None:
        start = time.perf_counter()
        try:
            forward = OrtForward(model, threads)
        except Exception as e:  # an onnxruntime that lacks an op: torch keeps serving
            print(f"setup: prompts and decode steps stay on torch: onnxruntime's graph failed to build ({e})", flush=True)
            return
        model.ort_forward = forward
        print("setup: prompts and decode steps run on onnxruntime from now on "
              f"(built in {time.perf_counter() - start:.1f} s)", flush=True)

    thread = threading.Thread(target=build, name="ort-forward", daemon=True)
    thread.start()
    return thread
