"""Reports: the paper's tables regenerated beside the runs of this suite."""
