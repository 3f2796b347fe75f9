"""GSM8K (openai/gsm8k, config "main") -> train.parquet, test.parquet.

The answer is what follows the last "####" of `answer`, thousands separators removed.

    python data_preprocess/gsm8k.py [--local_dataset_path DIR_OR_FILE] [--local_save_dir ~/data/bnpo/gsm8k]
"""

from preprocess_utils import DatasetSpec, field_reader, gsm8k_answer, main

SPEC = DatasetSpec(
    name="gsm8k",
    hub_id="openai/gsm8k",
    hub_config="main",
    splits={"train": "train", "test": "test"},
    question_keys=("question",),
    answer=field_reader(gsm8k_answer, "answer"),
)

if __name__ == "__main__":
    main(SPEC)
