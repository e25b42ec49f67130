"""The report's sections, one module each, in page order: overview and recommendations (:mod:`.overview`),
results per dataset and shot curves (:mod:`.results`), accuracy vs speed (:mod:`.efficiency`), the cross-domain
matrix (:mod:`.cross_domain`), ablations (:mod:`.ablation`), published vs measured (:mod:`.published`),
deployment thresholds (:mod:`.calibration`), the heatmap gallery (:mod:`.gallery`) and the configurations
appendix (:mod:`.configs`). Each section function takes the document and the
:class:`~vlmad.report.context.ReportContext` and adds its blocks (and its JSON data to ``ctx.data``)."""
