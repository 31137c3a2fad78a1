from mmsent.main import main

main()
