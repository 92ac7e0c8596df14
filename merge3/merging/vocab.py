"""Models whose vocabularies differ (fine-tunes that added tokens): mergekit 0.1.5's ``tokenizer_source``.

The output vocabulary is the base's (``base``) or the base's followed by every token another model adds
(``union``). Each model's token-indexed tensors (the input embedding; the head and biases when they are stored,
i.e. not tied) are re-indexed by token string onto the output ids before any merge arithmetic, so the merge
methods see tensors of one shape. A token a model lacks takes, as in mergekit:

- the row of the only model that has it (all models then agree on it: its task vectors are zero there);
- else the base's row when the base has it (endpoints lacking a base token stay at the base: zero delta);
- else the mean of the rows of the models that have it (summed in model order, in the tensors' dtype);
- zeros when no model has it.

Tied heads are not stored, so they are not aligned: the output keeps ``tie_word_embeddings`` and its head is the
merged embedding, which is what mergekit writes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Checkpoint

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_DONOR, _BASE, _MEAN, _ZERO = 0, 1, 2, 3


def config_vocab_size(config: dict) -> int | None:
    cfg = config if "vocab_size" in config else config.get("text_config", {})
    v = cfg.get("vocab_size")
    return int(v) if isinstance(v, int) else None


def set_config_vocab_size(config: dict, size: int) -> None:
    (config if "vocab_size" in config or "text_config" not in config else config["text_config"])["vocab_size"] = size


def vocabulary_tensors(folder: str | Path) -> set[str]:
    """Checkpoint names of the token-indexed tensors (input embedding, output head and their biases, under every
    name a tied parameter has), found as mergekit finds them: from the model class, instantiated without
    memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=False)
    ids = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        for attr in ("weight", "bias"):
            p = getattr(module, attr, None) if module is not None else None
            if isinstance(p, torch.Tensor):
                ids.add(id(p))
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"{folder}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); tokenizer_source needs "
                         f"every model's tokenizer")
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def _model_vocab(folder: Path, tokenizer) -> dict[str, int]:
    """A model's token -> row; every id must have a row (mergekit strips the base's extra tokens, merge3 refuses)."""
    vocab = tokenizer.get_vocab()
    size = config_vocab_size(Checkpoint(folder).config)
    if size is None:
        raise ValueError(f"{folder / 'config.json'}: no vocab_size (needed to align its vocabulary)")
    beyond = sorted((i, t) for t, i in vocab.items() if i >= size)
    if beyond:
        raise ValueError(f"{folder}: its tokenizer has {len(beyond)} token(s) with ids >= vocab_size {size} "
                         f"(first {beyond[0][1]!r}, id {beyond[0][0]}); expected every token to have an embedding row")
    return vocab


def _union_tokenizer(base: Path, tokenizers: list):
    """The base's tokenizer plus, in model order, the tokens other models have: plain vocabulary entries first,
    then added tokens with their settings (the first model that adds a token decides them), as mergekit orders
    them (it takes the models after the base in set order; merge3 in recipe order, so ids are reproducible)."""
    base_vocab = tokenizers[0].get_vocab()
    plain, added = [], {}
    for tok in tokenizers:
        decoder = tok.added_tokens_decoder
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i in decoder:
                added.setdefault(decoder[i].content, decoder[i])
            elif t not in base_vocab and t not in plain:
                plain.append(t)
    out = load_tokenizer(base)  # a fresh copy: the base's own tokenizer object stays as loaded
    new_plain = [t for t in plain if t not in added]
    if new_plain:
        out.add_tokens(new_plain)
    new_added = [a for c, a in added.items() if c not in out.get_vocab()]
    if new_added:
        out.add_tokens(new_added)
    return out


@dataclass
class Vocabulary:
    """The output tokenizer and, per model taking part, the source row of every output token (-1: missing)."""

    source: str
    tokenizer: object
    size: int
    models: list[str]                        # participants, in mergekit's gather order (models, then the base)
    rows: dict[str, torch.Tensor]            # model path -> (size,) int64 rows
    prefer: str | None                       # the base, when the recipe names one: its rows fill gaps first
    tensors: set[str] = field(default_factory=set)
    base: str = ""                           # whose tokenizer the output starts from (its files, when unchanged)
    tokenizer_changed: bool = False          # False: the base's tokenizer files describe the output exactly

    @classmethod
    def build(cls, source: str, base: str, models: list[str], prefer: str | None) -> "Vocabulary":
        """``models``: every model taking part (base included where it takes part), in gather order."""
        if source not in ("base", "union"):
            raise ValueError(f"tokenizer_source: expected base or union, got {source!r}")
        order = [base] + [m for m in models if not _same(m, base)]
        toks = {m: load_tokenizer(m) for m in order}
        vocabs = {m: _model_vocab(Path(m), toks[m]) for m in order}
        if source == "base":
            out_tok = toks[base]
        else:
            out_tok = _union_tokenizer(Path(base), [toks[m] for m in order])
        out_vocab = out_tok.get_vocab()
        size = len(out_vocab)
        if sorted(out_vocab.values()) != list(range(size)):
            raise ValueError(f"{base}: the output tokenizer's ids are not 0..{size - 1}; cannot lay out its rows")
        by_id = sorted(out_vocab, key=out_vocab.get)
        rows = {}
        for m in models:
            vocab = vocabs[_key(m, order)]  # once per model: it resolves paths (a vocabulary has ~50K tokens)
            rows[m] = torch.tensor([vocab.get(t, -1) for t in by_id], dtype=torch.int64)
        return cls(source, out_tok, size, list(models), rows, prefer, vocabulary_tensors(base), base=base,
                   tokenizer_changed=size != len(vocabs[base]))

    # ------------------------------------------------------------------------------------------------------
    def _gaps(self):
        """Output ids some model lacks, with the rule that fills them (and the donor model's index)."""
        present = torch.stack([self.rows[m] >= 0 for m in self.models])          # (models, size)
        count = present.sum(0)
        ids = torch.nonzero(count < len(self.models)).flatten()
        rule = torch.full((len(ids),), _MEAN, dtype=torch.int64)
        donor = present[:, ids].to(torch.int64).argmax(0)                          # first model having it
        c = count[ids]
        rule[c == 1] = _DONOR
        rule[c == 0] = _ZERO
        if self.prefer is not None:
            b = next(i for i, m in enumerate(self.models) if _same(m, self.prefer))
            at_base = (c >= 2) & present[b, ids]
            rule[at_base], donor[at_base] = _BASE, b
        return present, ids, rule, donor

    def align(self, name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every participant's tensor ``name`` (token rows first) laid out on the output ids, in the participants'
        promoted dtype (rows are copied exactly; only means round)."""
        ts = [tensors[m] for m in self.models]
        rest = ts[0].shape[1:]
        for m, t in zip(self.models, ts):
            if t.shape[1:] != rest:
                raise ValueError(f"{m}: tensor {name} has shape {list(t.shape)}; expected [*, {', '.join(map(str, rest))}]")
        dtype = ts[0].dtype
        for t in ts[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        present, ids, rule, donor = self._gaps()
        fill = torch.zeros((len(ids), *rest), dtype=dtype, device=ts[0].device)
        for j, (m, t) in enumerate(zip(self.models, ts)):
            src = self.rows[m][ids].to(t.device)
            pick = ((rule == _DONOR) | (rule == _BASE)) & (donor == j)
            if pick.any():
                fill[pick.to(fill.device)] = t[src[pick]].to(dtype)
        mean = rule == _MEAN
        if mean.any():
            acc = torch.zeros((int(mean.sum()), *rest), dtype=dtype, device=fill.device)
            for j, t in enumerate(ts):       # mergekit sums the rows one model at a time, then divides
                has = present[j, ids][mean]
                if has.any():
                    acc[has] = acc[has] + t[self.rows[self.models[j]][ids][mean][has]].to(dtype)
            fill[mean] = acc / present[:, ids][:, mean].sum(0).to(dtype).view(-1, *[1] * len(rest))
        out = {}
        for m, t in zip(self.models, ts):
            rows = self.rows[m].to(t.device)
            aligned = t.index_select(0, rows.clamp(min=0)).to(dtype)
            lacks = torch.nonzero(~present[self.models.index(m), ids]).flatten()
            if len(lacks):
                aligned[ids[lacks].to(t.device)] = fill[lacks.to(fill.device)]
            out[m] = aligned
        return out


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _key(m: str, order: list[str]) -> str:
    return next(o for o in order if _same(o, m))


def participants(recipe) -> tuple[str, list[str], str | None]:
    """As mergekit reads the recipe's YAML: the tokenizer base (base_model, or the first model when the YAML names
    none: a linear merge without the base), the models gathered for a tensor (the models, then base_model when
    it is not listed) and the base whose rows fill gaps first (None without base_model)."""
    named = "base_model" in recipe.to_dict()
    models = list(recipe.models)
    if named and not any(_same(m, recipe.base_model) for m in models):
        models.append(recipe.base_model)
    return (recipe.base_model if named else models[0]), models, (recipe.base_model if named else None)


def vocabulary_for(recipe) -> Vocabulary | None:
    """The recipe's vocabulary alignment (None without tokenizer_source). Loads tokenizers: before arithmetic."""
    if recipe.tokenizer_source is None:
        return None
    base, models, prefer = participants(recipe)
    return Vocabulary.build(recipe.tokenizer_source, base, models, prefer)


def check_rows(vocab: Vocabulary, ckpts: list[Checkpoint]) -> None:
    """Every token a model's tokenizer has must have a row in each of its token-indexed tensors."""
    for c in ckpts:
        key = next((m for m in vocab.models if _same(m, c.path)), None)
        if key is None:
            continue
        need = int(vocab.rows[key].max()) + 1
        for name in vocab.tensors:
            if name in c.meta and c.meta[name][0][0] < need:
                raise ValueError(f"{c.path}: tensor {name} has {c.meta[name][0][0]} rows; its tokenizer needs {need}")
