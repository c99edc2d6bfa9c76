"""The method's citation, in BibTeX: one string for the model cards and the Trainer's card."""

CITATION = """@inproceedings{wang2024translora,
  title     = {Trans-LoRA: towards data-free Transferable Parameter Efficient Finetuning},
  author    = {Runqian Wang and Soumya Ghosh and David Cox and Diego Antognini and Aude Oliva and
               Rogerio Feris and Leonid Karlinsky},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  eprint    = {2405.17258},
  archivePrefix = {arXiv},
}"""
