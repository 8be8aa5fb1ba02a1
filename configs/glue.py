"""Fine-tune ALBERT on a GLUE task with the paper's recipe (Appendix A.4).

  python train.py --config=configs/glue.py:task=rte --workdir=runs/rte \
      --config.init_from=/ckpt/albert-base-v2 --config.data_dir=/data/glue_data
  python train.py --config=configs/glue.py:task=mnli,size=xxlarge --workdir=runs/mnli \
      --config.init_from=/ckpt/albert-xxlarge-v2 --config.data_dir=/data/glue_data --config.num_seeds=5

TASK is cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli. An MNLI run also predicts AX (the
diagnostic set) when data_dir holds diagnostic/diagnostic.tsv. Without data_dir the data comes from
`datasets.load_dataset("nyu-mll/glue", TASK)`.
"""

import ml_collections

from configs import common

TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def get_config(arg: str = "task=rte") -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, {"task": TASKS, "size": common.SIZES})
    if "task" not in args:
        raise ValueError(f"configs/glue.py needs task=…; choose one of {', '.join(TASKS)}")
    return common.finetune_config(args["task"], args["task"], args.get("size", "base"))
