"""SOFI: cross-cumulants with virtual pixels, flattening, linearization, a blinking simulator and a network.

The modules follow the technique layout (docs/architecture.md): ``models`` (the cumulant forward
model of independent blinking emitters) -> ``simulate`` (blinking movies, microtubules, cameras)
-> ``estimate`` (flattening, deconvolution, linearization, balanced SOFI) -> ``nets`` (the
MISR-GRU network) -> ``learned`` (recipes, training, prediction) -> ``pipeline`` (a stack to SOFI
images, as ``fluojax sofi`` runs it); ``cumulants`` (auto- and cross-cumulants) and ``metrics``
(decorrelation resolution, Pearson, SQUIRREL, TPR/TNR) are its own pieces.
"""
