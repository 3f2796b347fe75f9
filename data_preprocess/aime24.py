"""AIME 2024 (math-ai/aime24) -> test.parquet; a validation set of the paper.

The hub copy wraps the answer in \\boxed{...} in `solution`; copies with an `answer` field use it.

    python data_preprocess/aime24.py [--local_dataset_path DIR_OR_FILE] [--local_save_dir ~/data/bnpo/aime24]
"""

from preprocess_utils import DatasetSpec, boxed_answer, field_reader, first_present, main, plain_answer

SPEC = DatasetSpec(
    name="aime24",
    hub_id="math-ai/aime24",
    splits={"test": "test"},
    question_keys=("problem", "question"),
    answer=first_present(field_reader(plain_answer, "answer"), field_reader(boxed_answer, "solution")),
)

if __name__ == "__main__":
    main(SPEC)
