"""Fine-tune ALBERT on SQuAD v1.1 or v2.0 with the paper's recipe (Appendix A.4).

  python train.py --config=configs/squad.py:version=2.0 --workdir=runs/squad2 \
      --config.init_from=/ckpt/albert-base-v2 \
      --config.train_file=/data/squad/train-v2.0.json --config.predict_file=/data/squad/dev-v2.0.json

`qa_head=albert_v2` uses the original ALBERT v2 head (start-conditioned end logits, a 5x5 beam, an
answer-class logit) instead of HF's AlbertForQuestionAnswering (which is the one `export` writes).
Without the files the data comes from `datasets.load_dataset("rajpurkar/squad" | "rajpurkar/squad_v2")`.
"""

import ml_collections

from configs import common


def get_config(arg: str = "version=2.0") -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, {"version": ("1.1", "2.0"), "size": common.SIZES})
    version = args.get("version", "2.0")
    c = common.finetune_config(f"squad{version}", "squad", args.get("size", "base"))
    c.version = version
    c.train_file = ""
    c.predict_file = ""
    c.doc_stride = 128
    c.max_query_length = 64
    c.n_best_size = 20
    c.max_answer_length = 30
    c.qa_head = "default"  # or "albert_v2"
    c.null_score_diff_threshold = 0.0  # v2: predict "" when null score - best span score exceeds this
    c.eval_batch_size = 48
    return c
