"""The report: every probe JSON -> metrics.csv (the tidy table), tables and figures drawn from it.

- `write`: `write_report`, every file of results/report/ (what `mimprobe report` runs);
- `table`: the tidy table and `select_best`, the one rule for "the best record";
- `tables`: the report's tables as cells, rendered by `markdown` (metrics.md), `html` (headline.html,
  per_block.html) and `text` (headline.txt, printed at the end of every `snakemake` run by `terminal`);
- `plots` and `maps`: the figures.

Nothing here names a probe family but few-shot (compared per shot count): a new family's rows
appear in every table and figure. A family's headline metric is `top1`, or `acc` for families
without it (k-means); families without validation rows are chosen by the deepest block.
"""

# Nothing is imported here: `table` (select_best) is imported by `mimprobe probe` and `predict`,
# whose code fingerprints must not include the figures.
