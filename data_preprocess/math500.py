"""MATH-500 (HuggingFaceH4/MATH-500) -> test.parquet; a validation set of the paper.

    python data_preprocess/math500.py [--local_dataset_path DIR_OR_FILE] [--local_save_dir ~/data/bnpo/math500]
"""

from preprocess_utils import DatasetSpec, boxed_answer, field_reader, first_present, main, plain_answer

SPEC = DatasetSpec(
    name="math500",
    hub_id="HuggingFaceH4/MATH-500",
    splits={"test": "test"},
    question_keys=("problem",),
    # `answer` is the gold; copies without it still carry the MATH `solution`
    answer=first_present(field_reader(plain_answer, "answer"), field_reader(boxed_answer, "solution")),
)

if __name__ == "__main__":
    main(SPEC)
