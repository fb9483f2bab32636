from weitiao.cli import main

main()
