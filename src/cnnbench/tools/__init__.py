"""Tools built on the core and the recipes: profile and synth (and synth validate), max-batch, soak, LoadGen
(with its dynamic batcher), report (with its charts) and compare.
"""
