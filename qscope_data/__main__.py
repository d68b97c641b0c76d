from qscope_data.cli import main

main()
