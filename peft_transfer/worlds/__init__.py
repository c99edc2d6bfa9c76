"""The worlds the demos, tests and benchmarks run in; the transfer itself never imports this package.

- `tiny_models`: two tiny model families built (and optionally pretrained) here, with their own tokenizers, so
  that no test downloads weights;
- `tasks`: procedural BIG-bench-style tasks (each a specific input distribution and its generic variants), drawn
  by the samplers of `samplers`;
- `corpus`: the generic pretraining corpus the tiny bases learn from (never the tasks' own formats).

The `demo-tiny` command passes the committed files of this world to the ordinary pipeline as paths.
"""
