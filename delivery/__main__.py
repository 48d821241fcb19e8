from delivery.extras import main

main()
