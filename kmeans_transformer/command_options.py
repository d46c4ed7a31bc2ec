"""
What the command line's parser reads from the package's registries, as plain data, so that `kmeans-transformer --help`
and argument errors import neither torch nor transformers. Written by `python scripts/write_command_options.py` from
`kmeans_transformer.cli.command_line_options()`; a test checks that it still equals it. Do not edit by hand.
"""

OPTIONS = {'variants': ['lloyd', 'soft', 'spherical', 'trimmed', 'sparse', 'kmedoids', 'gmm', 'fuzzy', 'learned'],
 'algorithms': ['lloyd', 'soft', 'spherical', 'trimmed', 'sparse', 'kmedoids', 'gmm', 'fuzzy'],
 'parameters': {'inverse_temperature': {'choices': [],
                                        'help': 'stiffness γ of the softmax blocks (soft assignment, sparsemax update, '
                                                'Gumbel draw); lloyd, soft, spherical, trimmed, sparse, kmedoids, '
                                                'learned: a finite number > 0 (default: unset; soft: 1.0; sparse: '
                                                '0.01; kmedoids: 1.0; learned: 1.0)'},
                'trim_quantile': {'choices': [],
                                  'help': "trim the points above this quantile of their cluster's squared distances; "
                                          'trimmed: a number in (0, 1] (default: 0.95); exclusive with '
                                          '--trim-fraction'},
                'trim_fraction': {'choices': [],
                                  'help': 'trim this fraction of the points, those farthest from their centroids; '
                                          'trimmed: a number in [0, 1) (default: unset); exclusive with '
                                          '--trim-quantile'},
                'medoid_selection': {'choices': ['deterministic', 'gumbel'],
                                     'help': "how the new medoid is chosen; kmedoids: one of ['deterministic', "
                                             "'gumbel'] (default: deterministic)"},
                'reg_covar': {'choices': [],
                              'help': 'added to every re-estimated variance; gmm: a finite number >= 0 (default: 0.0)'},
                'fuzzifier': {'choices': [],
                              'help': 'the exponent m of fuzzy c-means; fuzzy: a finite number > 1 (default: 2.0)'},
                'init_from': {'choices': ['lloyd', 'random'],
                              'help': 'initial weights of a trainable layer: the analytic soft Lloyd construction, or '
                                      "random; learned: one of ['lloyd', 'random'] (default: lloyd)"}},
 'algorithm_parameters': ['inverse_temperature',
                          'trim_quantile',
                          'trim_fraction',
                          'medoid_selection',
                          'reg_covar',
                          'fuzzifier'],
 'standard_sizes': [[3, 2, 10], [8, 16, 20], [32, 64, 10]],
 'families': ['normal', 'cauchy', 'gumbel', 'laplace', 'lognormal'],
 'initializations': ['lloyd', 'random'],
 'starts': ['random', 'kmeans++', 'farthest'],
 'evaluation_num_points': [128, 256, 512, 1024, 2048],
 'evaluation_seed': 1000003}
