"""The DVC pipeline's stages, one module each (dvc.yaml runs stages/<stage>.py, which calls `run`):

    download@<source>   pipeline.download    params sources.<source>  -> dataset/midi/<source>/
    preprocess@<source> pipeline.preprocess  dataset/midi/<source>/   -> dataset/processed/<source>/
    train@<family>      pipeline.train       dataset/processed/*      -> save/<family>.sess
    calibrate@<family>  pipeline.calibrate   save/<family>.sess       -> stats/<family>.yaml
    quantize@<family>   pipeline.quantize    .sess + stats            -> save/<family>.int8.sess
    generate@<family>   pipeline.generate    both .sess               -> output/<family>/<precision>/
    score@<family>      pipeline.score       both .sess + held-out    -> output/metrics/score_<family>.json
    evaluate            pipeline.evaluate    eval continuations       -> output/metrics/evaluate.json

Each module holds the config dataclass of its params.yaml section and one entry point,
`run(params, root, ...)`. Every path lives in `pipeline.paths`. The pipeline imports the library
(amadeus.codec, training, quant, generation, ...); the library never imports the pipeline.
"""
