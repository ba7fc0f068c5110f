"""Mac product names ("MacBook Air (M2, 2022)") by model identifier ("Mac14,2"), the ``hw.model`` agents send.

The names are Apple's, as its "Identify your Mac model" support pages list them beside each
"Model Identifier" (Macs from 2015 on):

- MacBook Air: https://support.apple.com/en-us/HT201862
- MacBook Pro: https://support.apple.com/en-us/HT201300
- iMac: https://support.apple.com/en-us/HT201634
- Mac mini: https://support.apple.com/en-us/HT201894
- Mac Studio: https://support.apple.com/en-us/HT213073
- Mac Pro: https://support.apple.com/en-us/HT202888
- MacBook: https://support.apple.com/en-us/HT201608

Where Apple gives one identifier to several products, the name says so ("... 2018 or 2019").
An identifier missing here (a Mac newer than the table, a virtual machine) is shown as it is;
add a new Mac's line from those pages.
"""

from __future__ import annotations

PRODUCT_NAMES: dict[str, str] = {
    # MacBook Air
    "MacBookAir7,1": "MacBook Air (11-inch, Early 2015)",
    "MacBookAir7,2": "MacBook Air (13-inch, Early 2015 or 2017)",
    "MacBookAir8,1": "MacBook Air (Retina, 13-inch, 2018)",
    "MacBookAir8,2": "MacBook Air (Retina, 13-inch, 2019)",
    "MacBookAir9,1": "MacBook Air (Retina, 13-inch, 2020)",
    "MacBookAir10,1": "MacBook Air (M1, 2020)",
    "Mac14,2": "MacBook Air (M2, 2022)",
    "Mac14,15": "MacBook Air (15-inch, M2, 2023)",
    "Mac15,12": "MacBook Air (13-inch, M3, 2024)",
    "Mac15,13": "MacBook Air (15-inch, M3, 2024)",
    "Mac16,12": "MacBook Air (13-inch, M4, 2025)",
    "Mac16,13": "MacBook Air (15-inch, M4, 2025)",
    # MacBook Pro
    "MacBookPro11,4": "MacBook Pro (Retina, 15-inch, Mid 2015)",
    "MacBookPro11,5": "MacBook Pro (Retina, 15-inch, Mid 2015)",
    "MacBookPro12,1": "MacBook Pro (Retina, 13-inch, Early 2015)",
    "MacBookPro13,1": "MacBook Pro (13-inch, 2016, Two Thunderbolt 3 ports)",
    "MacBookPro13,2": "MacBook Pro (13-inch, 2016, Four Thunderbolt 3 ports)",
    "MacBookPro13,3": "MacBook Pro (15-inch, 2016)",
    "MacBookPro14,1": "MacBook Pro (13-inch, 2017, Two Thunderbolt 3 ports)",
    "MacBookPro14,2": "MacBook Pro (13-inch, 2017, Four Thunderbolt 3 ports)",
    "MacBookPro14,3": "MacBook Pro (15-inch, 2017)",
    "MacBookPro15,1": "MacBook Pro (15-inch, 2018 or 2019)",
    "MacBookPro15,2": "MacBook Pro (13-inch, 2018 or 2019, Four Thunderbolt 3 ports)",
    "MacBookPro15,3": "MacBook Pro (15-inch, 2019)",
    "MacBookPro15,4": "MacBook Pro (13-inch, 2019, Two Thunderbolt 3 ports)",
    "MacBookPro16,1": "MacBook Pro (16-inch, 2019)",
    "MacBookPro16,2": "MacBook Pro (13-inch, 2020, Four Thunderbolt 3 ports)",
    "MacBookPro16,3": "MacBook Pro (13-inch, 2020, Two Thunderbolt 3 ports)",
    "MacBookPro16,4": "MacBook Pro (16-inch, 2019)",
    "MacBookPro17,1": "MacBook Pro (13-inch, M1, 2020)",
    "MacBookPro18,1": "MacBook Pro (16-inch, 2021)",
    "MacBookPro18,2": "MacBook Pro (16-inch, 2021)",
    "MacBookPro18,3": "MacBook Pro (14-inch, 2021)",
    "MacBookPro18,4": "MacBook Pro (14-inch, 2021)",
    "Mac14,7": "MacBook Pro (13-inch, M2, 2022)",
    "Mac14,5": "MacBook Pro (14-inch, 2023)",
    "Mac14,9": "MacBook Pro (14-inch, 2023)",
    "Mac14,6": "MacBook Pro (16-inch, 2023)",
    "Mac14,10": "MacBook Pro (16-inch, 2023)",
    "Mac15,3": "MacBook Pro (14-inch, M3, Nov 2023)",
    "Mac15,6": "MacBook Pro (14-inch, M3 Pro or M3 Max, Nov 2023)",
    "Mac15,8": "MacBook Pro (14-inch, M3 Pro or M3 Max, Nov 2023)",
    "Mac15,10": "MacBook Pro (14-inch, M3 Pro or M3 Max, Nov 2023)",
    "Mac15,7": "MacBook Pro (16-inch, Nov 2023)",
    "Mac15,9": "MacBook Pro (16-inch, Nov 2023)",
    "Mac15,11": "MacBook Pro (16-inch, Nov 2023)",
    "Mac16,1": "MacBook Pro (14-inch, M4, 2024)",
    "Mac16,6": "MacBook Pro (14-inch, M4 Pro or M4 Max, 2024)",
    "Mac16,8": "MacBook Pro (14-inch, M4 Pro or M4 Max, 2024)",
    "Mac16,5": "MacBook Pro (16-inch, 2024)",
    "Mac16,7": "MacBook Pro (16-inch, 2024)",
    "Mac17,2": "MacBook Pro (14-inch, M5)",
    # iMac
    "iMac16,1": "iMac (21.5-inch, Late 2015)",
    "iMac16,2": "iMac (Retina 4K, 21.5-inch, Late 2015)",
    "iMac17,1": "iMac (Retina 5K, 27-inch, Late 2015)",
    "iMac18,1": "iMac (21.5-inch, 2017)",
    "iMac18,2": "iMac (Retina 4K, 21.5-inch, 2017)",
    "iMac18,3": "iMac (Retina 5K, 27-inch, 2017)",
    "iMac19,1": "iMac (Retina 5K, 27-inch, 2019)",
    "iMac19,2": "iMac (Retina 4K, 21.5-inch, 2019)",
    "iMac20,1": "iMac (Retina 5K, 27-inch, 2020)",
    "iMac20,2": "iMac (Retina 5K, 27-inch, 2020)",
    "iMac21,1": "iMac (24-inch, M1, 2021)",
    "iMac21,2": "iMac (24-inch, M1, 2021)",
    "Mac15,4": "iMac (24-inch, 2023, Two ports)",
    "Mac15,5": "iMac (24-inch, 2023, Four ports)",
    "Mac16,2": "iMac (24-inch, 2024, Two ports)",
    "Mac16,3": "iMac (24-inch, 2024, Four ports)",
    "iMacPro1,1": "iMac Pro (2017)",
    # Mac mini
    "Macmini7,1": "Mac mini (Late 2014)",
    "Macmini8,1": "Mac mini (2018)",
    "Macmini9,1": "Mac mini (M1, 2020)",
    "Mac14,3": "Mac mini (2023)",
    "Mac14,12": "Mac mini (2023)",
    "Mac16,10": "Mac mini (2024)",
    "Mac16,11": "Mac mini (2024)",
    # Mac Studio
    "Mac13,1": "Mac Studio (2022)",
    "Mac13,2": "Mac Studio (2022)",
    "Mac14,13": "Mac Studio (2023)",
    "Mac14,14": "Mac Studio (2023)",
    "Mac15,14": "Mac Studio (2025)",
    "Mac16,9": "Mac Studio (2025)",
    # Mac Pro
    "MacPro6,1": "Mac Pro (Late 2013)",
    "MacPro7,1": "Mac Pro (2019)",
    "Mac14,8": "Mac Pro (2023)",
    # MacBook
    "MacBook8,1": "MacBook (Retina, 12-inch, Early 2015)",
    "MacBook9,1": "MacBook (Retina, 12-inch, Early 2016)",
    "MacBook10,1": "MacBook (Retina, 12-inch, 2017)",
}
"""Model identifier -> Apple's product name."""


def product_name(model: str | None) -> str | None:
    """Apple's name for a model identifier (``Mac14,2`` -> ``MacBook Air (M2, 2022)``); None if unknown."""
    return PRODUCT_NAMES.get((model or "").strip())
