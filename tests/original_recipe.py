"""Example statistics of pretraining data, and a recorder that measures them on the original's code.

`statistics` reads a list of examples (our dicts) and the corpus's documents and returns the numbers
that `tests/test_original_recipe.py` compares. `python tests/original_recipe.py` runs
google-research/albert's own `create_pretraining_data.py` (unmodified; TensorFlow replaced by a
stub, since only its file reading and logging are used) on the fixture corpus with the fixture
vocabulary for a number of seeds, converts its instances into our example dicts, and writes the
statistics' mean and standard deviation over seeds to `fixtures/original_recipe/original_stats.json`:

  git clone https://github.com/google-research/albert /tmp/albert   # commit b772393 was used
  python tests/original_recipe.py --albert /tmp/albert --seeds 20
"""

from __future__ import annotations

import argparse
import bisect
import json
import pathlib
import random
import sys
import types

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "original_recipe"
CORPUS = FIXTURES / "grimm_sentences.txt"
STATS = FIXTURES / "original_stats.json"
VOCAB = HERE / "fixtures" / "tokenizer" / "spiece.model"
# The settings of the comparison: the original's flags and our PretrainDataConfig fields.
SETTINGS = dict(
    max_seq_length=128, masked_lm_prob=0.15, max_predictions_per_seq=20, ngram=3, short_seq_prob=0.1
)


class Documents:
    """Where a run of token ids occurs: the corpus's documents as one searchable string."""

    def __init__(self, documents: list[np.ndarray]):
        parts, self.starts = [], []
        pos = 0
        for doc in documents:
            self.starts.append(pos)
            text = "," + ",".join(map(str, doc.tolist())) + ",|"
            parts.append(text)
            pos += len(text)
        self.text = "".join(parts)
        self.docs = parts

    def find(self, ids: np.ndarray) -> int:
        """The first document holding `ids` contiguously, or -1."""
        at = self.text.find("," + ",".join(map(str, ids.tolist())) + ",")
        return -1 if at < 0 else bisect.bisect_right(self.starts, at) - 1

    def holds(self, doc: int, ids: np.ndarray) -> bool:
        return ("," + ",".join(map(str, ids.tolist())) + ",") in self.docs[doc]


def statistics(
    examples: list[dict[str, np.ndarray]],
    documents: Documents,
    start_piece: np.ndarray,
    mask_id: int,
    seq_len: int,
) -> dict[str, float]:
    """Numbers that describe a set of examples; each has the same meaning for both codes."""
    lengths, a_lens, labels, other_doc, masked, full, kinds, starts, runs = [], [], [], [], [], [], [], [], []
    for ex in examples:
        n = int(ex["attention_mask"].sum())
        k = int(ex["masked_lm_weights"].sum())
        ids = ex["input_ids"][:n].copy()
        pos, lab = ex["masked_lm_positions"][:k], ex["masked_lm_ids"][:k]
        ids[pos] = lab
        seg = ex["token_type_ids"][:n]
        a, b = ids[1 : int((seg == 0).sum()) - 1], ids[int((seg == 0).sum()) : n - 1]
        lengths.append(n)
        a_lens.append(len(a))
        labels.append(int(ex["sentence_order_label"]))
        doc = documents.find(a)
        other_doc.append(doc >= 0 and not documents.holds(doc, b))
        masked.append(k / n)
        full.append(
            k == min(SETTINGS["max_predictions_per_seq"], max(1, round(n * SETTINGS["masked_lm_prob"])))
        )
        shown = ex["input_ids"][pos]
        kinds.append(np.stack([shown == mask_id, shown == lab, (shown != mask_id) & (shown != lab)]))
        starts.append(start_piece[lab])
        # Runs of masked whole words: a masked start piece opens a word; count consecutive masked words.
        is_masked = np.zeros(n, bool)
        is_masked[pos] = True
        word_start = start_piece[ids] | (seg != np.roll(seg, 1))
        run = 0
        for i in range(1, n - 1):
            if word_start[i]:
                if is_masked[i]:
                    run += 1
                elif run:
                    runs.append(run)
                    run = 0
        if run:
            runs.append(run)
    lengths, labels, other_doc = np.array(lengths), np.array(labels), np.array(other_doc)
    kinds_all = np.concatenate(kinds, axis=1)
    runs = np.array(runs)
    same = ~other_doc
    return {
        "examples": float(len(examples)),
        "mean_length": float(lengths.mean()),
        "length_lt_32": float((lengths < 32).mean()),
        "length_lt_64": float((lengths < 64).mean()),
        "length_lt_96": float((lengths < 96).mean()),
        "length_full": float((lengths == seq_len).mean()),
        "mean_a_length": float(np.mean(a_lens)),
        "label_1": float(labels.mean()),
        "b_from_other_document": float(other_doc.mean()),
        "label_1_within_document": float(labels[same].mean()),
        "masked_per_token": float(np.mean(masked)),
        "masked_at_budget": float(np.mean(full)),
        "as_mask": float(kinds_all[0].mean()),
        "as_kept": float(kinds_all[1].mean()),
        "as_random": float(kinds_all[2].mean()),
        "masked_start_piece": float(np.concatenate(starts).mean()),
        "masked_runs_1": float((runs == 1).mean()),
        "masked_runs_2": float((runs == 2).mean()),
        "masked_runs_3_plus": float((runs >= 3).mean()),
    }


def _stub_tensorflow() -> None:
    """The part of TF 1.x the original's data script touches: flags, logging, gfile."""
    from absl import flags

    gfile = types.SimpleNamespace(GFile=open, Glob=lambda p: sorted(pathlib.Path().glob(p)))
    logging = types.SimpleNamespace(info=lambda *a, **k: None, set_verbosity=lambda *a: None, INFO=0)
    v1 = types.ModuleType("tensorflow.compat.v1")
    v1.flags, v1.gfile, v1.logging = flags, gfile, logging
    tf = types.ModuleType("tensorflow")
    tf.compat = types.SimpleNamespace(v1=v1)
    sys.modules.update({"tensorflow": tf, "tensorflow.compat": tf.compat, "tensorflow.compat.v1": v1})
    sys.modules["tensorflow_hub"] = types.ModuleType("tensorflow_hub")


def record(albert_dir: pathlib.Path, seeds: int) -> dict:
    """Runs the original on the fixture corpus for `seeds` seeds; returns the statistics' mean and sd."""
    _stub_tensorflow()
    sys.path.insert(0, str(albert_dir.parent))
    package = types.ModuleType("albert")
    package.__path__ = [str(albert_dir)]
    sys.modules["albert"] = package
    import albert.create_pretraining_data as cpd  # noqa: E402 (needs the stubs)

    for name in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v1", "tensorflow_hub"):
        del sys.modules[name]  # the original holds its references; etils must not find a fake TF

    cpd.FLAGS(
        [
            "create_pretraining_data",
            f"--input_file={CORPUS}",
            "--output_file=/dev/null",
            "--vocab_file=unused",
            f"--spm_model_file={VOCAB}",
            *(f"--{k}={v}" for k, v in SETTINGS.items()),
        ]
    )
    tokenizer = cpd.tokenization.FullTokenizer(None, spm_model_file=str(VOCAB))
    from albert_jax.data.pretraining import TokenInfo
    from albert_jax.tokenizer import AlbertTokenizer

    ours = AlbertTokenizer(str(VOCAB))
    info = TokenInfo.from_tokenizer(ours)
    docs_text = [d.split("\n") for d in CORPUS.read_text(encoding="utf-8").strip().split("\n\n")]
    documents = Documents([np.array([i for s in d for i in ours.encode(s)], np.int64) for d in docs_text])

    per_seed = []
    for seed in range(seeds):
        np.random.seed(seed)  # the original draws n-gram lengths from numpy's global RNG
        instances = cpd.create_training_instances(
            [str(CORPUS)],
            tokenizer,
            SETTINGS["max_seq_length"],
            1,
            SETTINGS["short_seq_prob"],
            SETTINGS["masked_lm_prob"],
            SETTINGS["max_predictions_per_seq"],
            random.Random(seed),
        )
        examples = [_as_example(inst, tokenizer.sp_model.PieceToId, info) for inst in instances]
        per_seed.append(
            statistics(examples, documents, info.start_piece, info.mask_id, SETTINGS["max_seq_length"])
        )
    keys = per_seed[0]
    values = {k: np.array([s[k] for s in per_seed]) for k in keys}
    return {
        "source": "google-research/albert create_pretraining_data.py at b772393, TF stubbed",
        "settings": SETTINGS,
        "seeds": seeds,
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "sd": {k: float(v.std(ddof=1)) for k, v in values.items()},
    }


def _as_example(instance, piece_to_id, info) -> dict[str, np.ndarray]:
    """One of the original's TrainingInstances as our example dict (pieces to ids)."""

    def to_id(piece) -> int:
        return piece_to_id(piece.decode() if isinstance(piece, bytes) else piece)  # unknown: <unk>

    T, P = SETTINGS["max_seq_length"], SETTINGS["max_predictions_per_seq"]
    n = len(instance.tokens)
    out = {
        "input_ids": np.full(T, info.pad_id, np.int32),
        "attention_mask": np.zeros(T, np.int32),
        "token_type_ids": np.zeros(T, np.int32),
        "masked_lm_positions": np.zeros(P, np.int32),
        "masked_lm_ids": np.zeros(P, np.int32),
        "masked_lm_weights": np.zeros(P, np.float32),
        "sentence_order_label": np.asarray(int(instance.is_random_next), np.int32),
    }
    out["input_ids"][:n] = [to_id(t) for t in instance.tokens]
    out["attention_mask"][:n] = 1
    out["token_type_ids"][:n] = instance.segment_ids
    k = len(instance.masked_lm_positions)
    out["masked_lm_positions"][:k] = instance.masked_lm_positions
    out["masked_lm_ids"][:k] = [to_id(t) for t in instance.masked_lm_labels]
    out["masked_lm_weights"][:k] = 1.0
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--albert", type=pathlib.Path, required=True, help="a checkout of google-research/albert"
    )
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    result = record(args.albert.resolve(), args.seeds)
    STATS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["mean"], indent=1))
