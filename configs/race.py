"""Fine-tune ALBERT on RACE with the paper's recipe (Appendix A.4).

  python train.py --config=configs/race.py:size=base-v2 --workdir=runs/race \
      --config.init_from=/ckpt/albert-base-v2 --config.data_dir=/data/RACE

data_dir holds RACE/{train,dev,test}/{middle,high}/*.txt; without it the data comes from
`datasets.load_dataset("ehovy/race", "all")`. The paper uses lr 2e-5 and dropout 0.1 for v1 models and
lr 1e-5 and dropout 0 for v2 models: `size=<size>-v1|-v2` picks them (default v2).
"""

import ml_collections

from configs import common

SIZES = tuple(f"{s}{v}" for s in common.SIZES for v in ("", "-v1", "-v2"))


def get_config(arg: str = "size=base-v2") -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, {"size": SIZES})
    size, _, version = args.get("size", "base-v2").partition("-")
    c = common.finetune_config("race", "race", size)
    if version != "v1":
        c.learning_rate, c.dropout = 1e-5, 0.0
    c.max_qa_length = 128  # the question + option keep their last 128 tokens
    c.eval_batch_size = 16
    return c
