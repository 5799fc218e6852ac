"""Class-conditional image generation MAR-style: masked autoregression over continuous tokens
with a per-token diffusion loss (a showcase).

    model.py       the MAR image model (random order, or the raster-order ablation), its config
                   and presets; checkpoint kind "image"
    stage.py       the `image` training stage (config from the tokenizer and the classes, cached
                   latents, validation), run by `driftless image train`
    data.py        ImageFolder reading and writing, the 16-Procgen-games image set, latent caches
    classifier.py  the evaluation classifier trained on real frames (kind "image_classifier")
                   and the metrics it gives: accuracy, precision / recall, Fréchet distance
    inception.py   FID and Inception Score from user-given Inception weights
    evaluate.py    timed generation, class grids, the quality / speed sweep plot
    cli.py         `driftless image train|sample|classifier|eval|plot` and
                   `driftless data procgen-games` (registered by `driftless.cli`)

Built on the shared core (`driftless.nn`, `driftless.diffusion`, `driftless.train`,
`driftless.checkpoint`, `driftless.config`, `driftless.runtime`, `driftless.models.registry`)
and, because an image is a one-frame video here, on the world model's layers: the video
tokenizer turns frames into the tokens this model generates (a checkpoint of
`driftless.models.tokenizer`, loaded through the registry), the games come from Procgen like
CoinRun's (`driftless.data.coinrun`), images are cropped and resized like ingested video
frames (`driftless.data.videos`), and FID reuses FVD's Fréchet distance and loaders
(`driftless.eval.fvd`). Nothing of the other showcases.
"""
