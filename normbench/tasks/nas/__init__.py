"""Architecture search building blocks (SaBN's `NAS` experiments: DARTS on NAS-Bench-201 with
the supernet's norms taken from the registry; the recipe, the published numbers and what the
paper leaves open: docs/recipes.md#architecture-search-with-sabn-darts-on-nas-bench-201). Not
yet wired into the training loop.

- `supernet`: the search cell and supernet; branch-indexed norms get the official index
  (the sub-architecture feeding the operation's source node).
- `darts`: DARTS' first-order bilevel search (`DartsRecipe`, `DartsSearch`, `evaluate`).
- `data`: a registered data set as (weight batch, architecture batch) pairs.
- `table`: the NAS-Bench-201 table, read only behind `trust_pickle`.
- `search`: `run_search`, `table_accuracy`, `retrain_spec` (the found cell as a classification
  trial on the backbone `nas201`, normbench.models.nas201).
"""
