"""`cnnbench profile MODEL...`: a model's workload, layer by layer, as a versioned profile file.

The first step of AI Matrix's synthetic-benchmark framework (issue 11): what a network computes (operation
types, convolution geometry, FLOPs, parameters, bytes moved) and how it is distributed, so that a synthetic
network can be made to match a weighted mix of real ones. `load_profile` reads a profile made elsewhere
(of a model that cannot be shared) for the `synth` command.

The package, by job:
  layers.py        what a model computes, layer by layer: classifying torch calls into operation types, their
                   geometry, counting FLOPs, parameters and bytes on the meta device, the FLOP-weighted summaries
  measure.py       --measure: the timed, labelled training steps under torch.profiler and their time shares
  profile_file.py  the versioned profile file: made from a registry entry (profile_model), written, read back
                   and checked (load_profile, looks_like_profile)
  command.py       the `cnnbench profile` command: resolve, profile, write, print the summary
"""
