"""FinQA (numerical QA over financial reports): records, program executor, prompts and metrics — pure parts;
the data module is `finlight.data.finqa`, the model `finlight.models.finqa_generator`."""
