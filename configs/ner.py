"""Fine-tune ALBERT on CoNLL-2003 NER (entity-level F1 with seqeval).

  python train.py --config=configs/ner.py --workdir=runs/conll \
      --config.init_from=/ckpt/albert-base-v2 --config.data_dir=/data/conll2003

data_dir holds train.txt, valid.txt (or dev.txt) and test.txt in CoNLL column format; without it the
data comes from `datasets.load_dataset("eriktks/conll2003")`. The ALBERT paper reports no NER; the
defaults (common.FINETUNE_RECIPES["ner"]) are about 3 epochs at batch 32. The first sub-token of each
word carries its label, and long sentences are split into overlapping windows of whole words.
"""

import ml_collections

from configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, {"size": common.SIZES})
    return common.finetune_config("ner", "ner", args.get("size", "base"))
