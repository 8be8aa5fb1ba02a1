"""The console summary at the end of a pretraining run: held-out accuracies against their baselines, and
fill-mask guesses for a few held-out sentences chosen by a fixed rule (so runs compare)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from albert_jax import inference

# Function words never chosen as the masked word of a fill-mask example (guessing them shows little).
_STOPWORDS = frozenset(
    {
        "also",
        "been",
        "both",
        "does",
        "each",
        "from",
        "have",
        "into",
        "itself",
        "just",
        "like",
        "many",
        "more",
        "most",
        "much",
        "must",
        "only",
        "other",
        "same",
        "should",
        "some",
        "such",
        "than",
        "that",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "under",
        "until",
        "very",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "will",
        "with",
        "would",
        "your",
    }
)
NUM_FILL_MASK_EXAMPLES = 6


def fill_mask_examples(setup: Any, n: int = NUM_FILL_MASK_EXAMPLES) -> list[tuple[str, str]]:
    """(text with one [MASK], the masked piece) for the first `n` held-out documents that have a sentence
    of 8-40 pieces with a maskable word: a whole word of 4 or more letters that is one vocabulary piece and
    not a stopword. Each document gives its first such sentence, with the middle maskable word masked."""
    start_piece = setup.corpus.token_info.start_piece
    out = []
    for d in setup.corpus.document_split(setup.data_config.eval_fraction)[1]:
        for i in setup.corpus.document_sentence_range(int(d)):
            ids = setup.corpus.sentence(i).tolist()
            pieces = setup.tokenizer.convert_ids_to_tokens(ids)
            whole = [
                j
                for j, p in enumerate(pieces)
                if p.startswith("▁")
                and len(p) > 4
                and p[1:].isascii()
                and p[1:].isalpha()
                and p[1:].lower() not in _STOPWORDS
                and (j + 1 == len(ids) or start_piece[ids[j + 1]])
            ]
            if 8 <= len(pieces) <= 40 and whole:
                j = whole[len(whole) // 2]
                masked = pieces[:j] + ["▁[MASK]"] + pieces[j + 1 :]
                out.append(("".join(masked).replace("▁", " ").strip(), pieces[j]))
                break
        if len(out) == n:
            break
    return out


def print_summary(final_eval: dict[str, float], model: nn.Module, params: Any, setup: Any) -> None:
    """Prints the held-out metrics of `final_eval` (names without `eval/`) and the fill-mask guesses
    of `model` for `fill_mask_examples(setup)` (a `pretrain.PretrainSetup`)."""
    sentence = "".join(
        f", {name.upper()} accuracy {final_eval[f'{name}_accuracy']:.4f} (chance 0.5)"
        for name in ("sop", "nsp")
        if f"{name}_accuracy" in final_eval
    )
    print(
        f"held-out MLM accuracy {final_eval['mlm_accuracy']:.4f} "
        f"(most-frequent-token baseline {final_eval['mlm_majority_accuracy']:.4f}){sentence}"
    )
    print(
        "MLM accuracy where the input piece was replaced ([MASK] or random, so only the context tells): "
        f"{final_eval['mlm_replaced_accuracy']:.4f} "
        f"(baseline {final_eval['mlm_replaced_majority_accuracy']:.4f})"
    )
    examples = fill_mask_examples(setup)
    print(f"fill-mask, {len(examples)} held-out sentences (top 5; * = the masked word):")
    hits = 0
    for text, target in examples:
        try:
            (cands,) = inference.fill_mask(model, params, setup.tokenizer, text)
        except ValueError as e:  # e.g. the example is longer than the model's positions
            print(f"  skipped: {e}")
            continue
        hits += any(p == target for p, _ in cands)
        shown = ", ".join(f"{'*' if p == target else ''}{p.removeprefix('▁') or p} {q:.2f}" for p, q in cands)
        print(f"  {text}\n    [MASK] = {target.removeprefix('▁')}: {shown}")
    print(f"masked word in the top 5: {hits} of {len(examples)}")
