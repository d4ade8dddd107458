from snakemake.utils import min_version

min_version("9.0")


# The full study by default; `--configfile` replaces it rather than merging into it.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),


# The headline table in the terminal after every run; Snakemake skips onsuccess when nothing
# needs to run, so that message prints it too.
from mimprobe.report.terminal import print_headline, print_headline_when_nothing_to_do

if workflow.is_main_process:
    print_headline_when_nothing_to_do(logger, dry_run=lambda: workflow.dryrun)


onsuccess:
    print_headline()
