"""AMC 2023 (math-ai/amc23) -> test.parquet; a validation set of the paper.

    python data_preprocess/amc23.py [--local_dataset_path DIR_OR_FILE] [--local_save_dir ~/data/bnpo/amc23]
"""

from preprocess_utils import DatasetSpec, field_reader, main, plain_answer

SPEC = DatasetSpec(
    name="amc23",
    hub_id="math-ai/amc23",
    splits={"test": "test"},
    question_keys=("question", "problem"),
    answer=field_reader(plain_answer, "answer"),  # a number, 27.0 is written as "27"
)

if __name__ == "__main__":
    main(SPEC)
