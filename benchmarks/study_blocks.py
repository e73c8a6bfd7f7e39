"""Every method written the study's way, as the speed peer of ours (``step_time.py --study``).

PETL_Vision (the study) forks timm's ViT ``Block`` into a block whose attention is written out
(qkv linear, reshape, ``q @ k^T * scale``, softmax, ``@ v``, proj) and calls each method's modules
at fixed insertion points inside the attention, the MLP and the block. This file writes that
structure here, from the study's module names and shapes in the golden files
(``shared/fixtures/petl_golden``) and our mapping onto them (``tests/test_reference_outputs.py``);
no code is copied. ``study_model`` turns a stock timm ``VisionTransformer`` into the study-way
model of one method: the same backbone modules, its blocks replaced by one ``StudyBlock`` class
whose hooks a ``Spec`` switches on. Parameters carry the study's names, so a golden file loads
with ``strict=True``; the trained set follows the study's rule (inserted tensors and the head,
plus biases / LayerNorms / everything for the methods that tune existing weights).

Insertion points (``x`` the block input, ``h = norm(x)`` the branch input):
  lora       qkv(h) + B(A(dropout(h))) on the whole q|k|v output
  fact_tt/tk qkv, proj, fc1, fc2 each + s * V(dropout(core(U(.)))), one shared U, V
  ssf        scale-shift after patch embed, norm1, qkv, proj, norm2, fc1, fc2 and the final norm
  difffit    per-channel gains on the attention and MLP branch outputs
  vpt        prompt tokens concatenated before every (deep) / the first (shallow) block
  adapters   ``ft_attn_module`` / ``ft_mlp_module``: sequential_before (on h: RepAdapter),
             parallel (beside the branch, fed h or x: ConvPass, AdaptFormer) or sequential_after
             (on the branch output after LayerScale and drop-path, which the block then applies
             again: Pfeiffer, Houlsby, the VPT paper's adapter)

Initialisation is PyTorch's default (plus SSF's N(1, 0.02)): the benchmark copies our weights
in (``copy_from_ours``) and the test loads the golden ones, so it never matters here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from peft_core.registry import get_method

# Our registry's methods that are not written the study's way here, and why.
UNSUPPORTED = {
    "attn_tune": "not in the golden index (selective tuning trains existing weights only)",
    "mlp_tune": "not in the golden index (selective tuning trains existing weights only)",
    "block_tune": "not in the golden index (selective tuning trains existing weights only)",
    "vqt": "not in the golden index: no study structure to check a study-way VQT against",
    "zero_shot": "trains nothing: no training step",
}


@dataclass
class Spec:
    """Which insertion points one method uses, with its sizes (from our registry's config)."""

    train: str = "inserted"  # inserted | full | bias | ln | difffit (besides the head)
    lora: int = 0
    fact: str | None = None  # tt | tk
    fact_dim: int = 8
    fact_scaler: float = 1.0
    ssf: bool = False
    difffit: bool = False
    vpt: str | None = None  # shallow | deep
    vpt_num: int = 0
    attn_module: str | None = None  # adapter | convpass | repadapter
    attn_mode: str | None = None  # sequential_before | parallel | sequential_after
    attn_ln: str = "after"  # parallel modules: fed the normed (after) or the raw (before) input
    mlp_module: str | None = None
    mlp_mode: str | None = None
    mlp_ln: str = "after"
    rank: int = 8
    scaler: float = 1.0
    groups: int = 2  # RepAdapter's grouped up projection


def spec_for(method: str, **hp) -> Spec:
    """The study-way spec of ``method``, hyper-parameters resolved by our registry's config."""
    if method in UNSUPPORTED:
        raise ValueError(f"method '{method}' has no study-way model: {UNSUPPORTED[method]}")
    cfg = get_method(method).from_hp(**hp)
    if getattr(cfg, "adapter_layerscale_once", False) or getattr(cfg, "vpt_original", False):
        raise ValueError(f"method '{method}': {hp} is this project's variant, not the study's way")
    simple = {"linear": Spec(), "full": Spec(train="full"), "bitfit": Spec(train="bias"),
              "ln": Spec(train="ln"), "difffit": Spec(train="difffit", difffit=True),
              "ssf": Spec(ssf=True)}
    if method in simple:
        return simple[method]
    if method == "lora":
        return Spec(lora=cfg.lora_bottleneck)
    if method.startswith("fact_"):
        return Spec(fact=method[5:], fact_dim=cfg.fact_dim, fact_scaler=cfg.fact_scaler)
    if method.startswith("vpt_"):
        return Spec(vpt=method[4:], vpt_num=cfg.vpt_num)
    if method == "convpass":
        return Spec(attn_module="convpass", attn_mode="parallel", mlp_module="convpass",
                    mlp_mode="parallel", rank=cfg.convpass_bottleneck, scaler=cfg.convpass_scaler)
    if method == "repadapter":
        return Spec(attn_module="repadapter", attn_mode="sequential_before", mlp_module="repadapter",
                    mlp_mode="sequential_before", rank=cfg.repadapter_bottleneck,
                    scaler=cfg.repadapter_scaler, groups=cfg.repadapter_group)
    adapter = dict(mlp_module="adapter", rank=cfg.adapter_bottleneck, scaler=cfg.adapter_scaler)
    if method == "adaptformer":
        return Spec(mlp_mode="parallel", mlp_ln="before", **adapter)
    if method in ("lora_p_adapter", "rand_p_adapter", "zero_adapter"):
        return Spec(mlp_mode="sequential_after", **adapter)
    if method == "rand_h_adapter":
        return Spec(mlp_mode="sequential_after", attn_module="adapter",
                    attn_mode="sequential_after", **adapter)
    raise ValueError(f"method '{method}' has no study-way model")


# ---- the inserted modules (each returns the delta its insertion point adds) --------------------

class Adapter(nn.Module):
    """``s * up(dropout(relu(down(x))))``."""

    def __init__(self, dim: int, rank: int, scale: float) -> None:
        super().__init__()
        self.down_proj, self.up_proj = nn.Linear(dim, rank), nn.Linear(rank, dim)
        self.dropout, self.scale = nn.Dropout(0.1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_proj(self.dropout(F.relu(self.down_proj(x)))) * self.scale


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class ConvPass(nn.Module):
    """down, QuickGELU, 3x3 conv on the patch grid (each prefix token as a 1x1 image),
    QuickGELU, dropout, up, times s."""

    def __init__(self, dim: int, rank: int, scale: float, grid: tuple[int, int], prefix: int) -> None:
        super().__init__()
        self.adapter_down, self.adapter_up = nn.Linear(dim, rank), nn.Linear(rank, dim)
        self.adapter_conv = nn.Conv2d(rank, rank, 3, padding=1)
        self.dropout, self.scale, self.grid, self.prefix = nn.Dropout(0.1), scale, grid, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = quick_gelu(self.adapter_down(x))
        r, p = h.shape[-1], self.prefix
        patches = h[:, p:].reshape(b, *self.grid, r).permute(0, 3, 1, 2)
        patches = self.adapter_conv(patches).permute(0, 2, 3, 1).reshape(b, n - p, r)
        prefix = self.adapter_conv(h[:, :p].reshape(b * p, r, 1, 1)).reshape(b, p, r)
        h = self.dropout(quick_gelu(torch.cat([prefix, patches], dim=1)))
        return self.adapter_up(h) * self.scale


class RepAdapter(nn.Module):
    """``s * conv_B(dropout(conv_A(x)))`` with 1x1 Conv1d's over the tokens, conv_B grouped."""

    def __init__(self, dim: int, rank: int, scale: float, groups: int) -> None:
        super().__init__()
        self.conv_A = nn.Conv1d(dim, rank, 1)
        self.conv_B = nn.Conv1d(rank, dim, 1, groups=groups)
        self.dropout, self.scale = nn.Dropout(0.1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_B(self.dropout(self.conv_A(x.transpose(1, 2))))
        return h.transpose(1, 2) * self.scale


class LoRA(nn.Module):
    """``lora_b(lora_a(dropout(x)))`` added to the whole qkv output."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.lora_a = nn.Linear(dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, 3 * dim, bias=False)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_b(self.lora_a(self.dropout(x)))


class FacT(nn.Module):
    """FacT's shared U (FacTu), V (FacTv) and cores: per block (TT: ``per_block_para``) or from a
    core tensor FacTc and factor FacTp (TK: core j of block i is FacTc @ FacTp[:, 12 i + j]).
    The 12 cores of a block: q, k, v, proj, fc1 (4 chunks), fc2 (4 chunks)."""

    def __init__(self, kind: str, dim: int, d: int, depth: int, scale: float) -> None:
        super().__init__()
        self.kind, self.d, self.scale = kind, d, scale
        self.FacTu, self.FacTv = nn.Linear(dim, d, bias=False), nn.Linear(d, dim, bias=False)
        self.dropout = nn.Dropout(0.1)
        if kind == "tk":
            self.FacTc = nn.Parameter(torch.randn(d, d, d) * 0.02)
            self.FacTp = nn.Parameter(torch.randn(d, 12 * depth) * 0.02)
        else:
            self.per_block_para = nn.ModuleList(nn.ModuleDict({
                "attn": nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(4)),
                "mlp": nn.ModuleList([nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)]),
            }) for _ in range(depth))

    def _tk(self, block: int, first: int, n: int) -> torch.Tensor:
        """Cores ``first .. first+n-1`` of ``block``: (d_in, d_out, n)."""
        return self.FacTc @ self.FacTp[:, 12 * block + first: 12 * block + first + n]

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        return self.FacTv(self.dropout(h)) * self.scale

    def qkv(self, x: torch.Tensor, block: int) -> torch.Tensor:
        u = self.FacTu(x)
        if self.kind == "tk":
            t = self._tk(block, 0, 3)
            q, k, v = u @ t[:, :, 0], u @ t[:, :, 1], u @ t[:, :, 2]
        else:
            q, k, v = (layer(u) for layer in self.per_block_para[block]["attn"][:3])
        return torch.cat([self._out(q), self._out(k), self._out(v)], dim=-1)

    def proj(self, x: torch.Tensor, block: int) -> torch.Tensor:
        u = self.FacTu(x)
        if self.kind == "tk":
            return self._out(u @ self._tk(block, 3, 1)[:, :, 0])
        return self._out(self.per_block_para[block]["attn"][3](u))

    def fc1(self, x: torch.Tensor, block: int) -> torch.Tensor:
        u = self.FacTu(x)
        if self.kind == "tk":
            h = u @ self._tk(block, 4, 4).reshape(self.d, 4 * self.d)
        else:
            h = self.per_block_para[block]["mlp"][0](u)
        return self._out(h.reshape(*h.shape[:-1], 4, self.d)).flatten(-2)

    def fc2(self, x: torch.Tensor, block: int) -> torch.Tensor:
        u = self.FacTu(x.reshape(*x.shape[:-1], 4, -1)).flatten(-2)
        if self.kind == "tk":
            h = u @ self._tk(block, 8, 4).reshape(self.d, 4 * self.d).t()
        else:
            h = self.per_block_para[block]["mlp"][1](u)
        return self._out(h)


def _add_ssf(module: nn.Module, suffix: str, dim: int) -> None:
    """SSF's ``ssf_scale_<suffix>`` ~ N(1, 0.02) and ``ssf_shift_<suffix>`` ~ N(0, 0.02)."""
    tail = f"_{suffix}" if suffix else ""
    module.register_parameter(f"ssf_scale{tail}", nn.Parameter(1 + 0.02 * torch.randn(dim)))
    module.register_parameter(f"ssf_shift{tail}", nn.Parameter(0.02 * torch.randn(dim)))


def _ssf(module: nn.Module, suffix: str, y: torch.Tensor) -> torch.Tensor:
    tail = f"_{suffix}" if suffix else ""
    return y * getattr(module, f"ssf_scale{tail}") + getattr(module, f"ssf_shift{tail}")


def _after_linear(module: nn.Module, out: torch.Tensor, x: torch.Tensor, fact_part, ssf_suffix: str) -> torch.Tensor:
    """A wrapped linear's output with the study's FacT branch (on its input) and SSF added."""
    if fact_part is not None:
        out = out + fact_part(x, module.index)
    return _ssf(module, ssf_suffix, out) if module.ssf else out


# ---- the study's attention, MLP and block ---------------------------------------------------------

class StudyAttention(nn.Module):
    """Explicit attention around timm's own qkv / proj, with LoRA, FacT and SSF points."""

    def __init__(self, attn: nn.Module, spec: Spec, index: int, fact: FacT | None) -> None:
        super().__init__()
        for part in ("q_norm", "k_norm", "norm"):
            assert isinstance(getattr(attn, part, nn.Identity()), nn.Identity), part
        self.qkv, self.proj = attn.qkv, attn.proj
        self.attn_drop, self.proj_drop = attn.attn_drop, attn.proj_drop
        self.num_heads, self.scale, self.index, self.ssf = attn.num_heads, attn.scale, index, spec.ssf
        self._fact = (fact,)  # shared by every block: registered once, on block 0
        dim = self.proj.in_features
        if spec.lora:
            self.lora = LoRA(dim, spec.lora)
        if spec.ssf:
            _add_ssf(self, "qkv", 3 * dim)
            _add_ssf(self, "linear", dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        fact = self._fact[0]
        qkv = self.qkv(x)
        if hasattr(self, "lora"):
            qkv = qkv + self.lora(x)
        qkv = _after_linear(self, qkv, x, fact and fact.qkv, "qkv")
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(_after_linear(self, self.proj(x), x, fact and fact.proj, "linear"))


class StudyMlp(nn.Module):
    """timm's fc1 / act / fc2 with FacT and SSF points."""

    def __init__(self, mlp: nn.Module, spec: Spec, index: int, fact: FacT | None) -> None:
        super().__init__()
        assert isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity)
        self.fc1, self.act, self.drop1, self.fc2, self.drop2 = mlp.fc1, mlp.act, mlp.drop1, mlp.fc2, mlp.drop2
        self.index, self.ssf, self._fact = index, spec.ssf, (fact,)
        if spec.ssf:
            _add_ssf(self, "hidden", self.fc1.out_features)
            _add_ssf(self, "out", self.fc2.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fact = self._fact[0]
        h = self.drop1(self.act(_after_linear(self, self.fc1(x), x, fact and fact.fc1, "hidden")))
        return self.drop2(_after_linear(self, self.fc2(h), h, fact and fact.fc2, "out"))


class Prompts(nn.Module):
    """VPT's ``prompt_embeddings`` (prompted blocks, tokens, D), read by the blocks."""

    def __init__(self, layers: int, num: int, dim: int) -> None:
        super().__init__()
        self.prompt_embeddings = nn.Parameter(torch.empty(layers, num, dim).uniform_(-0.1, 0.1))
        self.dropout = nn.Dropout(0.1)


class StudyBlock(nn.Module):
    """timm's pre-norm block, with the study's insertion points (see the module docstring)."""

    def __init__(self, block: nn.Module, spec: Spec, index: int, depth: int, fact: FacT | None,
                 prompts: Prompts | None, grid: tuple[int, int], prefix: int) -> None:
        super().__init__()
        dim = block.norm1.normalized_shape[0]
        self.norm1, self.ls1, self.drop_path1 = block.norm1, block.ls1, block.drop_path1
        self.norm2, self.ls2, self.drop_path2 = block.norm2, block.ls2, block.drop_path2
        self.attn = StudyAttention(block.attn, spec, index, fact)
        self.mlp = StudyMlp(block.mlp, spec, index, fact)
        self.spec, self.index = spec, index
        for where in ("attn", "mlp"):
            kind = getattr(spec, f"{where}_module")
            module = {None: None, "adapter": lambda: Adapter(dim, spec.rank, spec.scaler),
                      "convpass": lambda: ConvPass(dim, spec.rank, spec.scaler, grid, prefix),
                      "repadapter": lambda: RepAdapter(dim, spec.rank, spec.scaler, spec.groups)}[kind]
            setattr(self, f"ft_{where}_module", module() if module else None)
        if spec.difffit:
            self.difffit_gamma1 = nn.Parameter(torch.ones(dim))
            self.difffit_gamma2 = nn.Parameter(torch.ones(dim))
        if spec.ssf:
            _add_ssf(self, "1", dim)
            _add_ssf(self, "2", dim)
        self._prompts = (prompts,)
        layers = 0 if prompts is None else prompts.prompt_embeddings.shape[0]
        self.prompted = index < layers
        # The study drops shallow prompts after block 0; deep ones leave after the last block.
        self.strip = prompts is not None and index == (0 if spec.vpt == "shallow" else depth - 1)

    def _branch(self, x, h, f, module, mode, ln, ls, drop_path, gamma):
        if mode == "sequential_before":
            h = h + module(h)
        out = f(h)
        if mode == "parallel":
            out = out + module(h if ln == "after" else x)
        if gamma is not None:
            out = out * gamma
        if mode == "sequential_after":  # the adapter reads the branch after LayerScale/drop-path
            out = drop_path(ls(out))
            out = out + module(out)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, prompts = self.spec, self._prompts[0]
        if self.prompted:
            p = prompts.prompt_embeddings.shape[1]
            if self.index > 0:
                x = x[:, p:]
            tokens = prompts.dropout(prompts.prompt_embeddings[self.index]).expand(x.shape[0], -1, -1)
            x = torch.cat([tokens, x], dim=1)
        halves = ((1, self.norm1, self.attn, self.ft_attn_module, s.attn_mode, s.attn_ln, self.ls1, self.drop_path1),
                  (2, self.norm2, self.mlp, self.ft_mlp_module, s.mlp_mode, s.mlp_ln, self.ls2, self.drop_path2))
        for i, norm, layer, module, mode, ln, ls, drop_path in halves:
            h = _ssf(self, str(i), norm(x)) if s.ssf else norm(x)
            out = self._branch(x, h, layer, module, mode, ln, ls, drop_path, getattr(self, f"difffit_gamma{i}", None))
            x = x + drop_path(ls(out))
        if self.strip:
            x = x[:, prompts.prompt_embeddings.shape[1]:]
        return x


# ---- the model ------------------------------------------------------------------------------------

def study_model(model: nn.Module, method: str, **hp) -> nn.Module:
    """Turn a stock timm ``VisionTransformer`` (in place) into the study-way model of ``method``:
    blocks replaced by ``StudyBlock``s, the study's tensors added under its names, and exactly the
    study's trained set left trainable. Returns the model."""
    spec = spec_for(method, **hp)
    stock = {id(p) for p in model.parameters()}
    dim, depth = model.embed_dim, len(model.blocks)
    fact = FacT(spec.fact, dim, spec.fact_dim, depth, spec.fact_scaler) if spec.fact else None
    prompts = None
    if spec.vpt:
        model.vpt = prompts = Prompts(depth if spec.vpt == "deep" else 1, spec.vpt_num, dim)
    grid = tuple(model.patch_embed.grid_size)
    model.blocks = nn.Sequential(*(StudyBlock(b, spec, i, depth, fact, prompts, grid, model.num_prefix_tokens)
                                   for i, b in enumerate(model.blocks)))
    if fact is not None:
        model.blocks[0].attn.fact = fact  # the study saves its one FacT under the first name
    if spec.ssf:
        _add_ssf(model.patch_embed, "1", dim)
        model.patch_embed.register_forward_hook(lambda m, args, y: _ssf(m, "1", y))
        _add_ssf(model, "", dim)
        # a partial, not a closure: ``copy.deepcopy(model)`` then reads the copy's own tensors
        model.norm.register_forward_hook(partial(_final_ssf, model))
    _set_trainable(model, spec, stock)
    return model


def _final_ssf(model: nn.Module, norm: nn.Module, args: tuple, y: torch.Tensor) -> torch.Tensor:
    return _ssf(model, "", y)


def _set_trainable(model: nn.Module, spec: Spec, stock: set[int]) -> None:
    norms = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    head = {id(p) for p in model.get_classifier().parameters()}
    for name, p in model.named_parameters():
        train = (id(p) not in stock or id(p) in head or spec.train == "full"
                 or (spec.train in ("bias", "difffit") and name.endswith(".bias"))
                 or (spec.train == "ln" and id(p) in norms)
                 or (spec.train == "difffit" and id(p) in norms and name.endswith(".weight")))
        p.requires_grad_(train)


@torch.no_grad()
def copy_from_ours(study: nn.Module, ours: nn.Module, method: str, stock_names: set[str]) -> None:
    """Copy our model's inserted tensors into the study-way model (same backbone values already),
    translating the study's names with the method's ``our_name``; a layout may differ (a 1x1
    conv kernel is a matrix or a grouped tensor here)."""
    mine, theirs = ours.state_dict(), study.state_dict()
    for name, t in theirs.items():
        if name not in stock_names:
            src = mine[get_method(method).our_name(name)]
            assert src.numel() == t.numel(), name
            t.copy_(src.reshape(t.shape))
