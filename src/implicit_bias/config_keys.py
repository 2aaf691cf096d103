"""Every config key with its type, default and meaning; the config's JSON Schema.

``implicit-bias keys`` prints :func:`key_rows`; ``implicit-bias keys
--json-schema FILE`` writes :func:`json_schema` (editors use it to complete and
check YAML, e.g. with ``# yaml-language-server: $schema=FILE`` on the config's
first line). A field's own ``Field(description=...)`` wins over the text here,
so a new key documents itself where it is declared; keys without one are
described in :data:`DESCRIPTIONS`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from .config import SAVED_HASH_KEY, ExperimentConfig

__all__ = ["DESCRIPTIONS", "json_schema", "key_rows", "keys_text"]

_KINDS = (
    "'overlap' (two unit Gaussians whose means are `shift` apart, not separable), "
    "'separable' (two half-Gaussians with a margin), 'degenerate' (all inputs on one "
    "line, Liu et al. 2023), 'gaussian_mixture' (x = y·mu + z, Frei et al. 2023), "
    "'sklearn' (a data set shipped with scikit-learn: breast_cancer, digits, iris, "
    "wine; no download), 'torchvision' (MNIST, FashionMNIST or CIFAR10 from files in "
    "torchvision's layout under data.root), 'file' (your own .npz/.npy/.csv)"
)

#: dotted key → what it means (sections end without a dot after their name)
DESCRIPTIONS: dict[str, str] = {
    "name": "Name of the experiment; results go to results/<name>/ without --out "
    "(default: the config file's stem).",
    "seed": "Seed of the runs (initial weights, minibatches) when sweep.seed is absent.",
    "data": "Where the training and test data come from; generated from data.seed.",
    "data.kind": "Data set kind: " + _KINDS + ".",
    "data.path": "File of the data for kind 'file': .npz with X_train, y_train (optional "
    "X_test, y_test), .npy holding X (labels in data.labels) or .csv; relative to the "
    "config file (for a results folder's config.yaml: to the config that made the folder).",
    "data.labels": "For kind 'file' with a .npy path: the .npy file holding the labels.",
    "data.label_column": "For kind 'file' with a .csv path: the label column's name or "
    "index (default: the last column).",
    "data.n_train": "Number of training points, at least 2 (generated kinds: default 200; "
    "'file', 'sklearn' and 'torchvision': a random subset, redrawn per data.seed; "
    "torchvision: default the whole training split).",
    "data.n_test": "Number of test points (generated kinds: default 1000; torchvision: a "
    "random subset of the test split, default all of it).",
    "data.d": "Input dimension of generated data (default 20).",
    "data.mean_norm": "gaussian_mixture: the norm of the class mean mu (default d^0.26).",
    "data.label_noise": "Fraction of flipped training labels (degenerate non-separable: "
    "default 0.2; others 0).",
    "data.margin": "separable: the class margin (default 1.0).",
    "data.shift": "overlap: distance between the two class means (default 1.0).",
    "data.p_positive": "Fraction of +1 labels (default 0.5).",
    "data.separable": "degenerate: separable data (default true unless label_noise > 0).",
    "data.root": "torchvision: the folder holding the files in torchvision's layout "
    "(<root>/MNIST/raw/*-idx*-ubyte[.gz], <root>/FashionMNIST/raw/…, "
    "<root>/cifar-10-batches-py/); relative to the config file.",
    "data.download": "torchvision: fetch missing files into data.root with torchvision "
    "(the optional extra implicit-bias[torchvision]; default false, never at test time).",
    "data.name": "sklearn: the data set, one of breast_cancer, digits, iris, wine; "
    "torchvision: MNIST, FashionMNIST or CIFAR10.",
    "data.classes": "sklearn and torchvision: the class split, [a, b] (a → +1, b → −1) "
    "or [[a, …], [c, …]] "
    "(default: digits even vs odd, breast_cancer benign vs malignant, iris and wine "
    "class 0 vs the rest; torchvision: all), or 'all': every class, labels 0…K−1 and K "
    "outputs.",
    "data.test_fraction": "'file' and 'sklearn' data without a test set: the fraction "
    "split off as the test set.",
    "data.seed": "Seed of the data; the runs of one data seed share one data set.",
    "data.normalize": "'none', 'unit' (every input scaled to norm 1) or 'standardize' "
    "(training mean 0, std 1 per feature); applied last.",
    "model": "The network: the fully connected family (kind mlp), Cohen et al.'s convnet "
    "(cnn) or the user's own torch.nn.Module (module); one output for ±1 labels, K for K "
    "classes.",
    "model.kind": "'mlp' (fully connected), 'cnn' (per entry of channels a 3×3 convolution "
    "with padding 1, the activation and 2×2 pooling, then a linear head; biases on; needs "
    "image data) or 'module' (model.module).",
    "model.channels": "cnn: output channels of each convolution block.",
    "model.pool": "cnn: 2×2 'max' or 'avg' pooling after each convolution.",
    "model.module": "module: 'package.module:factory', called as factory(**model.kwargs); "
    "a deterministic torch.nn.Module without buffers (no BatchNorm, no dropout).",
    "model.kwargs": "module: keyword arguments of the factory.",
    "model.batching": "cnn and module: how runs are batched, 'vmap', a 'loop' over runs "
    "(the same numbers), or 'auto' (vmap).",
    "model.bias": "mlp: a bias on every trained layer, zero at initialisation.",
    "model.backend": "mlp: 'auto' (the hand-written fast path where it applies: one output, "
    "no biases) or 'generic' (the torch.func path, the same numbers, for comparison).",
    "model.depth": "Number of weight matrices (2 = one hidden layer).",
    "model.width": "Hidden width m.",
    "model.activation": "Hidden activation: 'linear', 'relu', 'leaky_relu' max(leak·z, z), "
    "'smooth_leaky_relu' (Frei et al. 2023's smoothed leaky ReLU), 'tanh', 'elu' "
    "(alpha 1), 'gelu' (exact z·Phi(z)) or 'softplus'.",
    "model.leak": "Slope gamma of the leaky ReLUs for z < 0.",
    "model.smoothing": "Smoothing H of 'smooth_leaky_relu' (quadratic on |z| ≤ 1/H).",
    "model.parametrization": "'ntk': weights N(0, init_scale²), each layer's output × "
    "1/sqrt(fan_in); 'standard': weights N(0, init_scale²/fan_in); 'direct': weights "
    "N(0, init_scale²), no multiplier.",
    "model.last_layer": "'trained', or 'fixed_sign': last layer fixed at ±1/sqrt(m) (first "
    "half +, second half −), not trained (Frei et al. 2023).",
    "model.init_scale": "Scale omega of the initial weights (see model.parametrization); "
    "cnn and module: a factor on PyTorch's own initialisation, drawn per run seed.",
    "train": "The optimiser: full-batch gradient descent unless train.batch_size is set.",
    "train.loss": "'logistic' log(1+exp(−yf)), 'exponential' exp(−yf) or 'mse' ½(f−y)², "
    "averaged over the batch, for labels ±1; for K classes 'cross_entropy' (softmax) or "
    "'mse' ½ Σ_k (f_k − onehot_k)² averaged over examples.",
    "train.steps": "Number of updates.",
    "train.lr": "Learning rate eta (the base rate of the schedule), in train.lr_units.",
    "train.lr_units": "'absolute', or 'critical': eta = lr × 2/sharpness at initialisation, "
    "measured per run (1 = the critical rate).",
    "train.schedule": "Learning-rate schedule; 'constant', 'step', 'cosine' or 'warmup' "
    "(a plain string is its kind).",
    "train.schedule.kind": "Schedule kind: 'constant', 'step' (multiply by factor at each "
    "step in at), 'cosine' (decay to final × lr), 'warmup' (linear over steps).",
    "train.schedule.at": "step schedule: the steps at which the rate is multiplied by factor.",
    "train.schedule.factor": "step schedule: the factor applied at each step in at.",
    "train.schedule.final": "cosine schedule: the final rate as a fraction of lr.",
    "train.schedule.steps": "warmup schedule: number of warm-up steps.",
    "train.batch_size": "Minibatch size of SGD; null is full-batch gradient descent.",
    "train.dtype": "Floating point precision of training: 'float32' or 'float64'.",
    "train.device": "'cpu' or 'cuda'.",
    "train.optimizer": "Update rule, in PyTorch's conventions: 'gd', 'momentum' (heavy "
    "ball v ← βv + g, w ← w − eta·v), 'nesterov', 'rmsprop' or 'adam'.",
    "train.momentum": "β of 'momentum' and 'nesterov' (default 0.9); stability threshold "
    "(2+2β)/eta, Nesterov (2+2β)/((1+2β)eta).",
    "train.beta1": "Adam's first-moment decay β1 (default 0.9); Adam's threshold on the "
    "preconditioned sharpness is (2+2β1)/((1−β1)eta).",
    "train.beta2": "Second-moment decay of 'adam' (default 0.999) and 'rmsprop' (PyTorch's "
    "alpha, default 0.99).",
    "train.eps": "ε added to the square root of the second moment (adam, rmsprop; default 1e-8).",
    "train.bias_correction": "Adam's bias corrections of both moments (default true).",
    "train.flow": "'none', or 'central': integrate each run's central flow (Cohen, Damian "
    "et al. 2024, arXiv 2410.24206) and gradient flow from θ₀ beside full-batch GD "
    "(train.optimizer gd only); stores cf_* / gf_* traces on the step axis and cf_edge_step.",
    "train.flow_substeps": "Euler substeps of the flows per GD step (default 4, at most 1000).",
    "train.flow_eigs": "Unstable directions k the central flow tracks (default 1, at most 32; k >= 2 "
    "solves a small PSD-constrained problem with cvxpy, the 'central' extra).",
    "train.matmul_precision": "float32 matrix products of the training steps: 'highest', "
    "or 'high' (TF32 on CUDA; curvature stays in full precision).",
    "metrics": "What is measured, and when: eval steps and optional measurements.",
    "metrics.every": "Evaluate every this many steps (besides step 0, the last step and "
    "the dense early steps of metrics.dense_early).",
    "metrics.at": "Extra eval steps.",
    "metrics.dense_early": "Also evaluate at every step 1…10 and at log-spaced steps "
    "(8 per decade) until the multiples of metrics.every are as dense, so early events "
    "(a catapult's spike) are seen; false gives {0} ∪ multiples of every ∪ at ∪ {steps}.",
    "metrics.sharpness": "Top Hessian eigenvalue(s) by Lanczos at every eval step; false "
    "turns it off.",
    "metrics.sharpness.iters": "Lanczos iterations per eval step.",
    "metrics.sharpness.top_k": "Number of top eigenvalues (the rest go to sharpness_topk).",
    "metrics.sharpness.tol": "Relative residual below which an eigenvalue counts as converged.",
    "metrics.gn_sharpness": "Also the top eigenvalue of the Gauss–Newton part of the Hessian.",
    "metrics.ntk": "Top eigenvalue of the empirical neural tangent kernel (ntk_max).",
    "metrics.ntk_gram_at": "Eval steps at which the whole NTK Gram matrix is stored.",
    "metrics.stable_rank": "Stable rank ‖W‖²_F/‖W‖²_2 and numerical rank of every weight matrix.",
    "metrics.rank_tol": "Relative tolerance of the numerical rank.",
    "metrics.margins": "Margins, normalized margin, and for linear predictors the cosine "
    "and margin ratio to the hard-margin SVM.",
    "metrics.kkt": "KKT residuals of the max-margin problem (stationarity, slackness).",
    "metrics.trace": "Hutchinson estimate of the Hessian trace (and spectral density); "
    "true turns it on with defaults.",
    "metrics.trace.probes": "Number of random probe vectors (at most 10000: each is a "
    "Hessian-vector product per run and eval step).",
    "metrics.trace.density": "Also the spectral density (stochastic Lanczos quadrature).",
    "metrics.trace.iters": "Lanczos iterations of the spectral density.",
    "metrics.phase": "Thresholds of the rule that labels each run's phase.",
    "metrics.phase.catapult_rise": "A catapult needs the loss to rise above (1 + this) × the "
    "initial loss before the curvature first falls below the stability threshold.",
    "metrics.phase.diverge_factor": "A loss above this × the initial loss (or not finite) "
    "is divergence.",
    "metrics.phase.eos_tolerance": "The curvature ratio lambda·eta/c (c = 2 for GD) is 'at "
    "the threshold' within this; a run ending above 1 + this is not_converged.",
    "metrics.phase.eos_rise": "Edge of stability needs the loss to rise above its running "
    "minimum by more than this × the initial loss while the curvature hovers.",
    "metrics.phase.eos_hover": "Edge of stability needs the curvature at the threshold at "
    "this many consecutive eval steps.",
    "metrics.phase.converged_margin": "Converged needs a final loss ≤ (1 − this) × the "
    "initial loss.",
    "metrics.phase.oscillation_tol": "Converged needs the loss over the last 10 % of steps "
    "to rise above its running minimum there by at most this × the initial loss.",
    "metrics.phase.lazy_low": "Lazy needs the curvature at every eval step ≥ this × its "
    "initial value (below: sharpness_reduction).",
    "metrics.phase.lazy_high": "Lazy needs the curvature at every eval step ≤ this × its "
    "initial value (above, without hovering: progressive_sharpening).",
    "metrics.phase.dead_spread": "Outputs whose spread over the training points is below "
    "this × rms(y) are constant (a dead net).",
    "store": "What the results folder keeps.",
    "store.chunk_runs": "Runs per chunk (a unit of work and of resuming); null chooses it "
    "from the memory the runs need.",
    "store.weights": "Which weights to keep per run: any of 'init', 'final' ([] for none).",
    "sweep": "Dotted key → list of values; the runs are the cartesian product (seed → "
    "list of run seeds).",
    SAVED_HASH_KEY: "Written by the tool into a results folder's config.yaml: the hash of "
    "the config it holds. Ignored on input.",
}


def _deref(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    return node


def _describe(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> None:
    """Put :data:`DESCRIPTIONS` into the properties of ``node`` (recursively) where the
    field has no description of its own."""
    for name, prop in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        if key in DESCRIPTIONS and "description" not in prop:
            prop["description"] = DESCRIPTIONS[key]
        for sub in _sections(schema, prop):
            _describe(schema, sub, key + ".")


def _sections(schema: dict[str, Any], prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a property may be (a section, or each variant of a union)."""
    out = []
    for alt in [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])]:
        node = _deref(schema, alt)
        if node.get("type") == "object" and "properties" in node:
            out.append(node)
    return out


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file, every key described.

    The section classes' docstrings are replaced by the user-facing text of
    :data:`DESCRIPTIONS`; a results folder's ``config_hash`` is allowed.
    """
    schema = copy.deepcopy(ExperimentConfig.model_json_schema())
    for d in schema.get("$defs", {}).values():
        d.pop("description", None)  # class docstrings are for developers
    schema.pop("description", None)
    schema["title"] = "implicit-bias experiment config"
    schema["description"] = (
        "A config of the implicit-bias workbench: data, model, train, metrics, store, sweep."
    )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["properties"][SAVED_HASH_KEY] = {"type": "string"}
    _describe(schema, schema, "")
    for key in ("data", "model", "train", "metrics", "store", "sweep"):
        prop = schema["properties"].get(key)
        if prop is not None and "$ref" in prop:
            # a $ref's siblings are ignored by older validators: describe the target too
            _deref(schema, prop).setdefault("description", DESCRIPTIONS.get(key, ""))
    return schema


def _type_text(schema: dict[str, Any], prop: dict[str, Any]) -> str:
    alts = prop.get("anyOf") or prop.get("oneOf")
    if alts:
        texts = []
        for a in alts:
            t = _type_text(schema, a)
            if t not in texts:
                texts.append(t)
        return " | ".join(texts)
    node = _deref(schema, prop)
    if "enum" in node or "const" in node:
        vals = node.get("enum", [node.get("const")])
        return " | ".join(json.dumps(v) for v in vals)
    t = node.get("type", "any")
    if t == "object" and "properties" in node:
        return "section"
    if t == "object":
        return "mapping"
    if t == "array":
        return f"list[{_type_text(schema, node.get('items', {}))}]"
    names = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}
    text = names.get(t, str(t))
    bounds = []
    for k, op in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if k in node:
            v = node[k]
            bounds.append(f"{op} {v:g}" if isinstance(v, float) else f"{op} {v}")
    return text + (" " + ", ".join(bounds) if bounds else "")


def _default_text(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in prop:
        return ""
    d = prop["default"]
    if isinstance(d, dict):
        return "(section)" if d else "{}"
    return json.dumps(d)


def key_rows() -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, description)`` of every config key, in file order.

    Keys of a union (the schedule kinds) are listed once, with the kinds they
    belong to in the description.
    """
    schema = json_schema()
    rows: list[tuple[str, str, str, str]] = []
    seen: dict[str, int] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        required = set(node.get("required", []))
        for name, prop in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            if key == SAVED_HASH_KEY:
                continue
            subs = _sections(schema, prop)
            default = _default_text(prop, name in required)
            if subs and prop.get("default") not in (None, {}) and default != "required":
                default = "(section)"
            desc = prop.get("description") or DESCRIPTIONS.get(key, "")
            typ = _type_text(schema, prop)
            if key not in seen:
                seen[key] = len(rows)
                rows.append((key, typ, default, desc))
            else:  # a key of several union variants (the schedule's kind): one row
                k0, t0, d0, s0 = rows[seen[key]]
                if typ not in t0.split(" | "):
                    rows[seen[key]] = (k0, f"{t0} | {typ}", d0, s0)
            for sub in subs:
                walk(sub, key + ".")

    walk(schema, "")
    return rows


def keys_text() -> str:
    """The keys as plain text: one block per key (key, type, default; its meaning)."""
    lines = []
    for key, typ, default, desc in key_rows():
        head = f"{key}: {typ}"
        if default:
            head += f"  (default {default})" if default != "required" else "  (required)"
        lines.append(head)
        if desc:
            lines.append(f"    {desc}")
    return "\n".join(lines)
