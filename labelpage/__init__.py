"""The labelling page (`instructrl label FILE`): a local web page on which people rank the K responses
of each prompt. Above rlhf/: it reads and writes records through rlhf's loaders, and nothing in
rlhf/, parallel/ or models/ imports it."""
