"""Architecture search (SaBN's `NAS` experiments: DARTS on NAS-Bench-201 with the supernet's
norms taken from the registry; the recipe, the published numbers and what the paper leaves
open: docs/recipes.md#architecture-search-with-sabn-darts-on-nas-bench-201).

- `task`: the task `darts` (DARTS' first-order bilevel search through the one loop, the found
  cell scored by the table or retrained), `genotype_of_record`.
- `supernet`: the search cell and supernet; branch-indexed norms get the official index
  (the sub-architecture feeding the operation's source node).
- `data`: the architecture stream (a data set's validation split, in training mode).
- `table`: the NAS-Bench-201 table, read only behind `trust_pickle`.
- `search`: `table_accuracy`, `retrain_spec` (the found cell as a classification trial on the
  backbone `nas201`, normbench.models.nas201).
"""
