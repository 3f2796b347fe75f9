"""AIME 2025 (math-ai/aime25) -> test.parquet; a validation set of the paper.

    python data_preprocess/aime25.py [--local_dataset_path DIR_OR_FILE] [--local_save_dir ~/data/bnpo/aime25]
"""

from preprocess_utils import DatasetSpec, field_reader, main, plain_answer

SPEC = DatasetSpec(
    name="aime25",
    hub_id="math-ai/aime25",
    splits={"test": "test"},
    question_keys=("problem", "question"),
    answer=field_reader(plain_answer, "answer"),
)

if __name__ == "__main__":
    main(SPEC)
