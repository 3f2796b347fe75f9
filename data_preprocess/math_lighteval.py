"""MATH (DigitalLearningGmbH/MATH-lighteval) -> train.parquet, test.parquet; the paper's training set.

The answer is the content of the last \\boxed{...} of `solution`.

    python data_preprocess/math_lighteval.py [--local_dataset_path DIR] [--local_save_dir ~/data/bnpo/math_lighteval]
"""

from preprocess_utils import DatasetSpec, boxed_answer, field_reader, main

SPEC = DatasetSpec(
    name="math_lighteval",
    hub_id="DigitalLearningGmbH/MATH-lighteval",
    splits={"train": "train", "test": "test"},
    question_keys=("problem",),
    answer=field_reader(boxed_answer, "solution"),
)

if __name__ == "__main__":
    main(SPEC)
