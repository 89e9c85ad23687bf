"""The lowest layer: what every other layer may use and nothing here imports from them.

- `errors`: the user-fixable errors (`LlmrecError` and its kinds), printed as one line by the CLI;
- `atomic`: atomic writes of files and folders, output-folder checks;
- `markers`: versioned JSON marker files, read through one reader with one error format;
- `config`: typed dataclass configs, their CLI flags and YAML files;
- `device`: device strings, Lightning accelerators, thread counts;
- `progress`: progress lines for long loops (a bar on a terminal, periodic log lines elsewhere).
"""
