"""Planning with Diffusion Forcing: Maze2D (D4RL) and compositional crosses (a showcase).

    sequence_df.py  the low-dimensional Diffusion-Forcing sequence model (causal, or the
                    Diffuser-like bidirectional baseline); checkpoint kind "sequence_df", loaded
                    by `driftless.models.registry.load_model`
    stage.py        the `sequence_df` stage: its config for a maze dataset (`maze_config`)
    planner.py      model-agnostic planning: MPC, reward guidance, Monte Carlo Tree Guidance,
                    the full-sequence (Diffuser-like) baseline
    maze.py         Maze2D on PointMaze the D4RL way: layouts, environments, waypoint controller,
                    offline datasets, training windows
    train.py        training glue: samplers through the shared `Trainer`; `plan train`
    evaluate.py     D4RL-normalised returns of planners and reference policies, plots
    cross.py        the cross dataset and the compositional-generation experiment
    cli.py          `driftless plan train|maze|cross` and `driftless data maze` (registered by
                    `driftless.cli`)

Built on the shared core only (`driftless.nn`, `driftless.diffusion`, `driftless.train`,
`driftless.checkpoint`, `driftless.runtime`, `driftless.models.registry`); nothing of the
world model or the other showcases.
"""
